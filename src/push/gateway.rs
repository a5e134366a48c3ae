//! Delivery to HTTP push gateways (Push Gateway API `POST /_matrix/push/v1/notify`, the
//! payload sygnal expects), with retries and exponential backoff. Queued pushes live in
//! memory: a push still being retried when the server stops is dropped. Gateways must be
//! at addresses the [`AddressPolicy`] permits, checked when a pusher is set and again at
//! delivery, after DNS resolution; redirects are not followed.

mod address;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    api::client::push::{Pusher, PusherKind},
    push::{Action, PushFormat},
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub use self::address::{AddressPolicy, Cidr};
use super::PushRecord;
use crate::{Error, Result};

/// Attempts per push before it is dropped (backoff 1 s, 2 s, 4 s, ...).
const MAX_ATTEMPTS: u32 = 6;

/// The path every push gateway URL must have.
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// Checks a pusher URL: http(s) with the notify path, as the spec requires, at a host
/// `policy` permits (400 `M_INVALID_PARAM` otherwise).
pub fn check_url(url: &str, policy: &AddressPolicy) -> Result<()> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|_| Error::invalid_param("pusher data.url is not a valid URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid_param(
            "pusher data.url must be http or https",
        ));
    }
    if parsed.path() != NOTIFY_PATH {
        return Err(Error::invalid_param(format!(
            "pusher data.url must have the path {NOTIFY_PATH}"
        )));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| Error::invalid_param("pusher data.url has no host"))?;
    if !policy.permits_host(host) {
        return Err(Error::invalid_param(
            "pusher data.url points at an address push gateways may not have \
             (loopback, private, link-local or otherwise special)",
        ));
    }
    Ok(())
}

/// One push to one pusher.
pub struct Job {
    url: String,
    body: Value,
    user: String,
    app_id: String,
    pushkey: String,
}

impl Job {
    /// Builds the gateway request for `record` of `event` to `pusher` (HTTP pushers only;
    /// others yield a job that is skipped).
    pub fn new(
        user: &ruma::UserId,
        pusher: Pusher,
        event: &Value,
        record: &PushRecord,
        unread: u64,
        room_name: Option<&str>,
        sender_name: Option<&str>,
    ) -> Job {
        let (url, format, data) = match &pusher.kind {
            PusherKind::Http(http) => (http.url.clone(), http.format.clone(), http.data.clone()),
            _ => (String::new(), None, Default::default()),
        };
        let tweaks: serde_json::Map<String, Value> = record
            .actions
            .iter()
            .filter_map(|a| match a {
                // serialised as `{"set_tweak": name, "value": v}`; a bare highlight means true
                Action::SetTweak(_) => serde_json::to_value(a).ok().and_then(|v| {
                    let name = v["set_tweak"].as_str()?.to_owned();
                    Some((name, v.get("value").cloned().unwrap_or(json!(true))))
                }),
                _ => None,
            })
            .collect();
        let device = json!({
            "app_id": pusher.ids.app_id,
            "pushkey": pusher.ids.pushkey,
            "pushkey_ts": 0,
            "data": data,
            "tweaks": tweaks,
        });
        let counts = json!({ "unread": unread });
        let mut notification = json!({
            "event_id": event["event_id"],
            "room_id": event["room_id"],
            "counts": counts,
            "devices": [device],
            "prio": if record.highlight { "high" } else { "low" },
        });
        if format != Some(PushFormat::EventIdOnly) {
            let n = notification.as_object_mut().expect("object");
            n.insert("type".into(), event["type"].clone());
            n.insert("sender".into(), event["sender"].clone());
            n.insert("content".into(), event["content"].clone());
            if let Some(name) = room_name {
                n.insert("room_name".into(), json!(name));
            }
            if let Some(name) = sender_name {
                n.insert("sender_display_name".into(), json!(name));
            }
            if let Some(key) = event.get("state_key") {
                if event["type"] == "m.room.member" {
                    n.insert("user_is_target".into(), json!(key == &event["sender"]));
                }
            }
        }
        Job {
            url,
            body: json!({ "notification": notification }),
            user: user.to_string(),
            app_id: pusher.ids.app_id,
            pushkey: pusher.ids.pushkey,
        }
    }
}

/// Called with `(user_id, app_id, pushkey)` when a gateway rejects a push key.
type OnRejected = Box<dyn Fn(&str, &str, &str) + Send + Sync>;

/// The delivery queue.
pub struct Gateway {
    tx: mpsc::UnboundedSender<Job>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    policy: Arc<AddressPolicy>,
}

impl Gateway {
    /// A queue delivering only to gateways `policy` permits; nothing is delivered until
    /// [`Gateway::start`].
    pub fn new(policy: AddressPolicy) -> Gateway {
        let (tx, rx) = mpsc::unbounded_channel();
        Gateway {
            tx,
            rx: Mutex::new(Some(rx)),
            policy: Arc::new(policy),
        }
    }

    /// Checks a pusher URL against the spec's shape and the address policy.
    pub fn check_url(&self, url: &str) -> Result<()> {
        check_url(url, &self.policy)
    }

    /// Queues a push for `job`'s pusher (skipped when it has no URL).
    pub fn queue(&self, job: Job) {
        if job.url.is_empty() {
            return;
        }
        if self.tx.send(job).is_ok() {
            metrics::gauge!(crate::metrics::PUSH_QUEUE).increment(1.0);
        }
    }

    /// Starts the delivery task (once; later calls do nothing).
    pub fn start(&self, on_rejected: impl Fn(&str, &str, &str) + Send + Sync + 'static) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let on_rejected: Arc<OnRejected> = Arc::new(Box::new(on_rejected));
        let policy = self.policy.clone();
        // No proxy (it would resolve the name itself) and no redirects (they could lead
        // anywhere): the policy-filtering resolver decides every address connected to.
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(address::FilteringResolver::new(policy.clone())))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "push delivery disabled: no HTTP client");
                return;
            }
        };
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                // Pushers stored before the policy existed meet it here (IP literals are
                // not resolved, so the resolver alone would not see them).
                if let Err(e) = check_url(&job.url, &policy) {
                    tracing::warn!(app_id = %job.app_id, error = %e, "push gateway address refused");
                    metrics::gauge!(crate::metrics::PUSH_QUEUE).decrement(1.0);
                    continue;
                }
                let client = client.clone();
                let on_rejected = on_rejected.clone();
                tokio::spawn(async move {
                    deliver(&client, job, &**on_rejected).await;
                    metrics::gauge!(crate::metrics::PUSH_QUEUE).decrement(1.0);
                });
            }
        });
    }
}

async fn deliver(
    client: &reqwest::Client,
    job: Job,
    on_rejected: &(dyn Fn(&str, &str, &str) + Send + Sync),
) {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=MAX_ATTEMPTS {
        match client.post(&job.url).json(&job.body).send().await {
            Ok(resp) if resp.status().is_success() => {
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                let rejected = body["rejected"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|k| k == job.pushkey.as_str()));
                if rejected {
                    tracing::info!(app_id = %job.app_id, "push key rejected by gateway; removing pusher");
                    on_rejected(job.user.as_str(), &job.app_id, &job.pushkey);
                }
                return;
            }
            Ok(resp) if resp.status().is_client_error() => {
                tracing::warn!(status = %resp.status(), url = %job.url, "push gateway refused the push");
                return;
            }
            Ok(resp) => {
                tracing::debug!(status = %resp.status(), attempt, "push gateway error; retrying");
            }
            Err(e) => {
                tracing::debug!(error = %e, attempt, "push gateway unreachable; retrying");
            }
        }
        if attempt < MAX_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    tracing::warn!(url = %job.url, "push dropped after {MAX_ATTEMPTS} attempts");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls_must_be_notify_endpoints() {
        let public = AddressPolicy::default();
        assert!(check_url("https://push.example/_matrix/push/v1/notify", &public).is_ok());
        assert!(check_url("https://push.example/other", &public).is_err());
        assert!(check_url("ftp://push.example/_matrix/push/v1/notify", &public).is_err());
        assert!(check_url("not a url", &public).is_err());
    }

    #[test]
    fn gateway_urls_must_be_at_permitted_addresses() {
        let public = AddressPolicy::default();
        for url in [
            "http://127.0.0.1:5000/_matrix/push/v1/notify",
            "http://localhost:5000/_matrix/push/v1/notify",
            "http://169.254.169.254/_matrix/push/v1/notify",
            "http://[::1]/_matrix/push/v1/notify",
            "http://10.0.0.7/_matrix/push/v1/notify",
            "http://[::ffff:192.168.0.1]/_matrix/push/v1/notify",
        ] {
            let err = check_url(url, &public).unwrap_err();
            assert_eq!(err.errcode(), "M_INVALID_PARAM", "{url}");
        }
        let loopback = AddressPolicy::new(&["127.0.0.0/8".into()]).unwrap();
        assert!(check_url("http://127.0.0.1:5000/_matrix/push/v1/notify", &loopback).is_ok());
        assert!(check_url("http://10.0.0.7/_matrix/push/v1/notify", &loopback).is_err());
    }
}
