//! `myelin user …`: administers the accounts of the **running** server over HTTP, through
//! its admin API (`/_synapse/admin/...`), so accounts — the first administrator too —
//! are made without stopping it. The credential is the operator token the server writes
//! to `<data_dir>/admin_token` (mode 0600) at each start, read from the data dir of the
//! same config; `MYELIN_ADMIN_TOKEN` (an administrator's access token) takes its place
//! for a server on another machine.

use std::{
    io::IsTerminal,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::{bail, Context};
use myelin::{config::Config, users::OPERATOR_TOKEN_FILE};
use serde_json::{json, Value};

use crate::UserCommand;

/// An admin API client for one server.
struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: String,
    server_name: String,
}

/// The server's URL on this machine: its `listen` address, with a wildcard address
/// replaced by loopback.
fn local_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

fn encode(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

impl AdminClient {
    fn new(config: &Config, url: Option<String>) -> anyhow::Result<AdminClient> {
        let token = match std::env::var("MYELIN_ADMIN_TOKEN") {
            Ok(token) if !token.is_empty() => token,
            _ => {
                let path = config.data_dir.join(OPERATOR_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "cannot read the operator token {}: is `myelin serve` running on this \
                             data dir (it writes the file at start), and may this user read it?",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        let base = url
            .unwrap_or_else(|| local_url(config.listen))
            .trim_end_matches('/')
            .to_owned();
        Ok(AdminClient {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()?,
            base,
            token,
            server_name: config.server_name.clone(),
        })
    }

    /// `@name:server` for a localpart, or the id as given.
    fn user_id(&self, name: &str) -> String {
        if name.starts_with('@') {
            name.to_owned()
        } else {
            format!("@{}:{}", name.to_lowercase(), self.server_name)
        }
    }

    /// Sends one request; answers the status and the JSON body.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}: is it running?", self.base))?;
        let status = res.status().as_u16();
        let body = res.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Like [`AdminClient::call`], failing on an error status with the server's message.
    async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, body) = self.call(method, path, body).await?;
        if !(200..300).contains(&status) {
            bail!("the server answered {status}: {}", describe(&body));
        }
        Ok(body)
    }
}

fn describe(body: &Value) -> String {
    match (body["errcode"].as_str(), body["error"].as_str()) {
        (Some(code), Some(error)) => format!("{code}: {error}"),
        _ => body.to_string(),
    }
}

/// The password from the command line, or prompted for (twice) on a terminal.
fn password_arg(password: Option<String>) -> anyhow::Result<String> {
    if let Some(p) = password {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no --password given and stdin is not a terminal to prompt on");
    }
    let first = rpassword::prompt_password("Password: ")?;
    let second = rpassword::prompt_password("Repeat password: ")?;
    if first != second {
        bail!("passwords do not match");
    }
    Ok(first)
}

/// Runs one `myelin user` command against the running server.
pub async fn run(config: &Config, url: Option<String>, action: UserCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let client = AdminClient::new(config, url)?;
    match action {
        UserCommand::Create {
            name,
            admin,
            password,
        } => {
            let user = client.user_id(&name);
            let path = format!("/_synapse/admin/v2/users/{}", encode(&user));
            let (status, body) = client.call(Method::GET, &path, None).await?;
            match status {
                200 => bail!("{user} already exists"),
                404 => {}
                _ => bail!("the server answered {status}: {}", describe(&body)),
            }
            let password = password_arg(password)?;
            let body = json!({ "password": password, "admin": admin });
            client.ok(Method::PUT, &path, Some(body)).await?;
            println!("created {user}{}", if admin { " (admin)" } else { "" });
        }
        UserCommand::Passwd {
            name,
            password,
            keep_sessions,
        } => {
            let user = client.user_id(&name);
            let password = password_arg(password)?;
            let body = json!({ "new_password": password, "logout_devices": !keep_sessions });
            let path = format!("/_synapse/admin/v1/reset_password/{}", encode(&user));
            client.ok(Method::POST, &path, Some(body)).await?;
            println!("password of {user} changed");
        }
        UserCommand::List { deactivated } => {
            let mut from = 0u64;
            loop {
                let path = format!(
                    "/_synapse/admin/v2/users?from={from}&limit=500&deactivated={deactivated}"
                );
                let page = client.ok(Method::GET, &path, None).await?;
                for user in page["users"].as_array().into_iter().flatten() {
                    let mut line = user["name"].as_str().unwrap_or_default().to_owned();
                    for flag in ["admin", "is_guest", "deactivated"] {
                        if user[flag].as_bool() == Some(true) {
                            line.push_str(&format!(" ({})", flag.trim_start_matches("is_")));
                        }
                    }
                    println!("{line}");
                }
                match page["next_token"].as_str().and_then(|t| t.parse().ok()) {
                    Some(next) => from = next,
                    None => break,
                }
            }
        }
        UserCommand::Deactivate { name, erase } => {
            let user = client.user_id(&name);
            let path = format!("/_synapse/admin/v1/deactivate/{}", encode(&user));
            client
                .ok(Method::POST, &path, Some(json!({ "erase": erase })))
                .await?;
            println!("deactivated {user}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_reached_on_loopback() {
        assert_eq!(
            local_url("0.0.0.0:8008".parse().unwrap()),
            "http://127.0.0.1:8008"
        );
        assert_eq!(local_url("[::]:8008".parse().unwrap()), "http://[::1]:8008");
        assert_eq!(
            local_url("10.0.0.5:8448".parse().unwrap()),
            "http://10.0.0.5:8448"
        );
        assert_eq!(encode("@a:b"), "%40a%3Ab");
    }
}
