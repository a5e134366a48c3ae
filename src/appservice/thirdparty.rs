//! Third-party networks through the bridges: the protocols the registered application
//! services declare (`protocols` in their registration), their metadata and instances
//! (`GET {url}/_matrix/app/v1/thirdparty/protocol/{protocol}`), and the lookups of
//! locations and users, asked of every bridge that can answer and merged.

use std::collections::BTreeMap;

use myelin_appservice::Registration;
use serde_json::Value;

use super::AppserviceService;

/// What a lookup asks a bridge for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Rooms on the remote network (`location`).
    Location,
    /// Users on the remote network (`user`).
    User,
}

impl Lookup {
    fn path(self) -> &'static str {
        match self {
            Lookup::Location => "location",
            Lookup::User => "user",
        }
    }
}

impl AppserviceService {
    /// The protocols the bridges declare, by name, each with the metadata its bridges
    /// answer: the first answer's fields, with the instances of every bridge of that
    /// protocol, each instance given an `instance_id` (`{appservice}|{network_id}`, as
    /// Synapse). A bridge that does not answer, or answers something that is not an
    /// object, is left out. With `only`, just that protocol.
    pub async fn thirdparty_protocols(&self, only: Option<&str>) -> BTreeMap<String, Value> {
        let mut protocols: BTreeMap<String, Value> = BTreeMap::new();
        for reg in self.registrations.iter() {
            for protocol in &reg.protocols {
                if only.is_some_and(|p| p != protocol) {
                    continue;
                }
                let Some(Value::Object(mut info)) =
                    self.get_thirdparty(reg, &["protocol", protocol], &[]).await
                else {
                    continue;
                };
                let mut instances = match info.remove("instances") {
                    Some(Value::Array(list)) => list,
                    _ => Vec::new(),
                };
                for instance in &mut instances {
                    let network = instance.get("network_id").and_then(Value::as_str);
                    if let Some(network) = network.map(str::to_owned) {
                        instance["instance_id"] = Value::from(format!("{}|{network}", reg.id));
                    }
                }
                let merged = protocols.entry(protocol.clone()).or_insert_with(|| {
                    info.insert("instances".to_owned(), Value::Array(Vec::new()));
                    Value::Object(info)
                });
                if let Some(list) = merged["instances"].as_array_mut() {
                    list.extend(instances);
                }
            }
        }
        protocols
    }

    /// Locations or users matching `fields` on `protocol`'s network (every bridge of the
    /// protocol), or with `protocol` `None` the reverse lookup by `alias` / `userid` in
    /// `fields` (every bridge that declares a protocol). The answers' lists, concatenated.
    pub async fn thirdparty_lookup(
        &self,
        kind: Lookup,
        protocol: Option<&str>,
        fields: &[(String, String)],
    ) -> Vec<Value> {
        let mut found = Vec::new();
        for reg in self.registrations.iter() {
            let path: Vec<&str> = match protocol {
                Some(p) if reg.protocols.iter().any(|q| q == p) => vec![kind.path(), p],
                Some(_) => continue,
                None if reg.protocols.is_empty() => continue,
                None => vec![kind.path()],
            };
            if let Some(Value::Array(list)) = self.get_thirdparty(reg, &path, fields).await {
                found.extend(list);
            }
        }
        found
    }

    /// `GET {url}/_matrix/app/v1/thirdparty/{path…}?{query}` with the `hs_token`: the
    /// JSON answer of a 2xx, else `None` (logged).
    async fn get_thirdparty(
        &self,
        reg: &Registration,
        path: &[&str],
        query: &[(String, String)],
    ) -> Option<Value> {
        let base = reg.url.as_ref()?;
        let mut url = reqwest::Url::parse(&format!("{base}/_matrix/app/v1/thirdparty")).ok()?;
        url.path_segments_mut().ok()?.extend(path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let answer = self.http.get(url).bearer_auth(&reg.hs_token).send().await;
        match answer {
            Ok(resp) if resp.status().is_success() => match resp.json::<Value>().await {
                Ok(value) => Some(value),
                Err(e) => {
                    tracing::warn!(appservice = %reg.id, error = %e.without_url(), "third-party answer is not JSON");
                    None
                }
            },
            Ok(resp) => {
                tracing::debug!(appservice = %reg.id, status = %resp.status(), "third-party query refused");
                None
            }
            Err(e) => {
                tracing::warn!(appservice = %reg.id, error = %e.without_url(), "third-party query failed");
                None
            }
        }
    }
}
