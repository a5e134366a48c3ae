//! The companion SFU run inside `myelin serve` (`[rtc] embedded_sfu = true`): one command
//! gives the homeserver, the token service and the SFU, sharing one LiveKit key pair.

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context;
use myelin_sfu::{Config as SfuConfig, Sfu};

use super::keys::LiveKitKeys;
use crate::config::RtcConfig;

/// A running embedded SFU.
pub struct EmbeddedSfu {
    /// The SFU (rooms, metrics, shutdown).
    pub sfu: Arc<Sfu>,
    /// Where its signalling and internal API listen.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl EmbeddedSfu {
    /// Tells every participant the server is going away and stops listening.
    pub fn shutdown(self) {
        self.sfu.shutdown();
        self.task.abort();
    }
}

/// The embedded SFU's settings: the `rtc.sfu_config` file (or the SFU's defaults) with the
/// `MYELIN_SFU_*` variables read through `lookup` applied, the homeserver's key pair and
/// internal secret, and — when `livekit_url` is a plain `ws://ip:port` — that address to
/// listen on, so the URL handed to clients and the listener cannot disagree.
pub fn sfu_config(
    rtc: &RtcConfig,
    keys: &LiveKitKeys,
    internal_secret: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<SfuConfig> {
    let mut config = if rtc.sfu_config.is_empty() {
        SfuConfig::default()
    } else {
        let path = Path::new(&rtc.sfu_config);
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading rtc.sfu_config {}", path.display()))?;
        SfuConfig::from_toml(&text).with_context(|| format!("rtc.sfu_config {}", path.display()))?
    };
    config.apply_env(lookup)?;
    if let Some(addr) = rtc
        .livekit_url
        .strip_prefix("ws://")
        .and_then(|rest| rest.trim_end_matches('/').parse::<SocketAddr>().ok())
    {
        config.listen = addr;
    }
    config.keys.clear();
    config
        .keys
        .insert(keys.api_key.clone(), keys.api_secret.clone());
    config.internal.secret = Some(internal_secret.to_owned());
    config.validate()?;
    Ok(config)
}

/// Binds and starts the SFU described by `config`.
pub async fn start(config: SfuConfig) -> anyhow::Result<EmbeddedSfu> {
    let listen = config.listen;
    let sfu = Sfu::new(config).context("starting the embedded SFU's media engine")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "binding the embedded SFU to {listen} (another SFU running? set \
                 rtc.embedded_sfu = false or move it with rtc.livekit_url)"
            )
        })?;
    let addr = listener.local_addr()?;
    let served = sfu.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = myelin_sfu::serve(served, listener).await {
            tracing::error!(error = %e, "embedded SFU stopped");
        }
    });
    tracing::info!(%addr, "embedded SFU listening");
    Ok(EmbeddedSfu { sfu, addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_takes_the_homeservers_keys_and_url() {
        let keys = LiveKitKeys::generate();
        let rtc = RtcConfig {
            livekit_url: "ws://127.0.0.1:7999".into(),
            ..RtcConfig::default()
        };
        let config = sfu_config(&rtc, &keys, "internal", |k| {
            (k == "MYELIN_SFU_UDP_PORT_MIN").then(|| "40000".into())
        })
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:7999".parse().unwrap());
        assert_eq!(config.keys.len(), 1);
        assert_eq!(config.keys[&keys.api_key], keys.api_secret);
        assert_eq!(config.internal.secret.as_deref(), Some("internal"));
        assert_eq!(config.rtc.udp_port_min, 40000);

        // Behind a TLS proxy the listener comes from the SFU's own settings.
        let rtc = RtcConfig {
            livekit_url: "wss://sfu.example.org".into(),
            ..RtcConfig::default()
        };
        let config = sfu_config(&rtc, &keys, "internal", |k| {
            (k == "MYELIN_SFU_LISTEN").then(|| "0.0.0.0:7881".into())
        })
        .unwrap();
        assert_eq!(config.listen, "0.0.0.0:7881".parse().unwrap());

        let rtc = RtcConfig {
            sfu_config: "/nonexistent/sfu.toml".into(),
            ..RtcConfig::default()
        };
        assert!(sfu_config(&rtc, &keys, "internal", |_| None).is_err());
    }

    #[tokio::test]
    async fn starts_and_answers() {
        let keys = LiveKitKeys::generate();
        let rtc = RtcConfig {
            livekit_url: "ws://127.0.0.1:0".into(),
            ..RtcConfig::default()
        };
        // Media on loopback, on a port of its own (tests run side by side).
        let media_port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let config = sfu_config(&rtc, &keys, "internal", |k| match k {
            "MYELIN_SFU_BIND_IP" => Some("127.0.0.1".into()),
            "MYELIN_SFU_UDP_PORT" => Some(media_port.clone()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.rtc.udp_port.to_string(), media_port);
        let embedded = start(config).await.unwrap();
        let body = reqwest::get(format!("http://{}/", embedded.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "OK");
        embedded.shutdown();
    }
}
