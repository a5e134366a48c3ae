//! End-to-end encryption keys: upload, query, claim, changes, cross-signing keys and
//! signatures.

use std::{collections::BTreeMap, sync::Arc};

use axum::{extract::State, Json};
use ruma::{
    api::client::keys::{
        claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
    },
    api::{OutgoingResponse, OutgoingResponseExt},
    serde::Raw,
    OneTimeKeyAlgorithm, OwnedOneTimeKeyId, OwnedUserId, UInt,
};
use serde_json::{json, Value};

use super::account::auth_json;
use crate::{
    api::ruma::{raw, RouterExt, RouterJsonExt, Ruma},
    e2ee::StreamPoint,
    services::Services,
    sync::SyncToken,
    users::{Stage, UiaFlows},
    Error, Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router
        .ruma(upload_keys)
        .ruma_json(query_keys)
        .ruma_json(claim_keys)
        .ruma(key_changes)
        .ruma(upload_signing_keys)
        .ruma_json(upload_signatures)
}

/// A typed ruma response as JSON with `failures` always present (ruma leaves an empty map
/// out; Synapse and the spec examples always send it, and some clients expect it).
fn with_failures<T: OutgoingResponse>(response: T) -> Result<Json<Value>> {
    let http = response
        .try_into_http_response::<Vec<u8>>()
        .map_err(|e| Error::internal(format!("response serialisation failed: {e}")))?;
    let mut body: Value = serde_json::from_slice(http.body())?;
    if let Some(map) = body.as_object_mut() {
        map.entry("failures").or_insert_with(|| json!({}));
    }
    Ok(Json(body))
}

/// The JSON object under `key` of a request body (absent means empty).
fn body_map(body: Option<&Value>, key: &str) -> Result<BTreeMap<String, Value>> {
    match body.and_then(|b| b.get(key)) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => Ok(map.clone().into_iter().collect()),
        Some(_) => Err(Error::bad_json(format!("{key} must be a JSON object"))),
    }
}

/// A ruma `Raw` request field as plain JSON (the typed fields are parsed whatever the
/// request's content type says; `json_body` only when it is JSON).
pub(super) fn raw_json<T>(raw: &Raw<T>) -> Result<Value> {
    raw.deserialize_as_unchecked()
        .map_err(|e| Error::bad_json(format!("invalid key object: {e}")))
}

pub(super) fn raw_map<K: ToString, T>(
    map: &BTreeMap<K, Raw<T>>,
) -> Result<BTreeMap<String, Value>> {
    map.iter()
        .map(|(k, v)| Ok((k.to_string(), raw_json(v)?)))
        .collect()
}

fn uint(n: u64) -> UInt {
    UInt::try_from(n).unwrap_or(UInt::MAX)
}

/// `POST /_matrix/client/v3/keys/upload`
async fn upload_keys(
    State(services): State<Arc<Services>>,
    req: Ruma<upload_keys::v3::Request>,
) -> Result<upload_keys::v3::Response> {
    let session = req.session()?;
    let device_keys = req.body.device_keys.as_ref().map(raw_json).transpose()?;
    let one_time_keys = raw_map(&req.body.one_time_keys)?;
    let mut fallback_keys = raw_map(&req.body.fallback_keys)?;
    if fallback_keys.is_empty() {
        // The unstable name some clients still send.
        fallback_keys = body_map(req.json_body.as_ref(), "org.matrix.msc2732.fallback_keys")?;
        for id in fallback_keys.keys() {
            OwnedOneTimeKeyId::try_from(id.as_str())
                .map_err(|e| Error::invalid_param(format!("invalid key id {id:?}: {e}")))?;
        }
    }
    let counts = services
        .e2ee
        .upload_keys(
            &session.user_id,
            &session.device_id,
            device_keys.as_ref(),
            &one_time_keys,
            &fallback_keys,
        )
        .await?;
    Ok(upload_keys::v3::Response::new(
        counts
            .into_iter()
            .map(|(alg, n)| (OneTimeKeyAlgorithm::from(alg), uint(n)))
            .collect(),
    ))
}

/// `POST /_matrix/client/v3/keys/query`
async fn query_keys(
    State(services): State<Arc<Services>>,
    req: Ruma<get_keys::v3::Request>,
) -> Result<Json<Value>> {
    let user = req.sender_user()?;
    let found = services.e2ee.query_keys(user, &req.body.device_keys)?;
    let mut response = get_keys::v3::Response::new();
    response.failures = found.failures;
    for (user, devices) in found.device_keys {
        let mut out = BTreeMap::new();
        for (device, keys) in devices {
            out.insert(device, raw(&keys)?);
        }
        response.device_keys.insert(user, out);
    }
    for (from, to) in [
        (found.master_keys, &mut response.master_keys),
        (found.self_signing_keys, &mut response.self_signing_keys),
        (found.user_signing_keys, &mut response.user_signing_keys),
    ] {
        for (user, key) in from {
            to.insert(user, raw(&key)?);
        }
    }
    with_failures(response)
}

/// `POST /_matrix/client/v3/keys/claim`
async fn claim_keys(
    State(services): State<Arc<Services>>,
    req: Ruma<claim_keys::v3::Request>,
) -> Result<Json<Value>> {
    req.session()?;
    let request = req
        .body
        .one_time_keys
        .iter()
        .map(|(user, devices)| {
            let devices = devices
                .iter()
                .map(|(device, alg)| (device.clone(), alg.to_string()))
                .collect();
            (user.clone(), devices)
        })
        .collect();
    let (claimed, failures) = services.e2ee.claim_keys(&request).await?;
    let mut one_time_keys = BTreeMap::new();
    for (user, devices) in claimed {
        let mut out_devices = BTreeMap::new();
        for (device, keys) in devices {
            let mut out_keys = BTreeMap::new();
            for (id, key) in keys {
                let id = OwnedOneTimeKeyId::try_from(id.as_str())
                    .map_err(|e| Error::internal(format!("stored key id {id:?}: {e}")))?;
                out_keys.insert(id, raw(&key)?);
            }
            out_devices.insert(device, out_keys);
        }
        one_time_keys.insert(user, out_devices);
    }
    let mut response = claim_keys::v3::Response::new(one_time_keys);
    response.failures = failures;
    with_failures(response)
}

/// `GET /_matrix/client/v3/keys/changes`
async fn key_changes(
    State(services): State<Arc<Services>>,
    req: Ruma<get_key_changes::v3::Request>,
) -> Result<get_key_changes::v3::Response> {
    let user = req.sender_user()?;
    let point = |t: SyncToken| StreamPoint {
        timeline: t.timeline,
        e2ee: t.e2ee,
    };
    let from = point(SyncToken::parse(&req.body.from)?);
    let to = point(SyncToken::parse(&req.body.to)?);
    let changes = services.e2ee.device_list_changes(user, from, to)?;
    Ok(get_key_changes::v3::Response::new(
        changes.changed,
        changes.left,
    ))
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`
async fn upload_signing_keys(
    State(services): State<Arc<Services>>,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> Result<upload_signing_keys::v3::Response> {
    let user = req.sender_user()?;
    let body = &req.body;
    let master = body.master_key.as_ref().map(raw_json).transpose()?;
    let self_signing = body.self_signing_key.as_ref().map(raw_json).transpose()?;
    let user_signing = body.user_signing_key.as_ref().map(raw_json).transpose()?;
    let (master, self_signing, user_signing) = (
        master.as_ref(),
        self_signing.as_ref(),
        user_signing.as_ref(),
    );
    let keys = [master, self_signing, user_signing];
    // Bad keys are refused before any password prompt.
    services
        .e2ee
        .check_signing_keys(user, master, self_signing, user_signing)?;
    // Replacing existing cross-signing keys needs the password; the first upload (and
    // re-uploading identical keys) does not, as in Synapse.
    if services.e2ee.signing_keys_upload_needs_auth(user, keys)? {
        services.users.check_uia(
            &UiaFlows::single(Stage::Password),
            Some(user),
            auth_json(req.json_body.as_ref(), req.body.auth.as_ref()).as_ref(),
        )?;
    }
    services
        .e2ee
        .upload_signing_keys(user, master, self_signing, user_signing)
        .await?;
    Ok(upload_signing_keys::v3::Response::new())
}

/// `POST /_matrix/client/v3/keys/signatures/upload`
async fn upload_signatures(
    State(services): State<Arc<Services>>,
    req: Ruma<upload_signatures::v3::Request>,
) -> Result<Json<Value>> {
    let user = req.sender_user()?;
    let mut signed: BTreeMap<OwnedUserId, BTreeMap<String, Value>> = BTreeMap::new();
    for (target, keys) in &req.body.signed_keys {
        let Value::Object(keys) = serde_json::to_value(keys)? else {
            return Err(Error::bad_json("signed keys must be JSON objects"));
        };
        signed.insert(target.clone(), keys.into_iter().collect());
    }
    let failures = services.e2ee.upload_signatures(user, &signed).await?;
    let mut response = upload_signatures::v3::Response::new();
    for (target, keys) in failures {
        let mut out = BTreeMap::new();
        for (key_id, failure) in keys {
            out.insert(key_id, serde_json::from_value(failure)?);
        }
        response.failures.insert(target, out);
    }
    with_failures(response)
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use serde_json::{json, Value};

    use crate::api::client::account::tests::{app, call, register_user};

    /// `(token, user_id, device_id)` of a new account.
    pub(crate) async fn account(app: &axum::Router, name: &str) -> (String, String, String) {
        let token = register_user(app, name).await;
        let (_, who) = call(
            app,
            "GET",
            "/_matrix/client/v3/account/whoami",
            Some(&token),
            None,
        )
        .await;
        (
            token,
            who["user_id"].as_str().unwrap().to_owned(),
            who["device_id"].as_str().unwrap().to_owned(),
        )
    }

    fn device_keys(user: &str, device: &str) -> Value {
        json!({
            "user_id": user, "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": { format!("curve25519:{device}"): "c", format!("ed25519:{device}"): "e" },
            "signatures": { user: { format!("ed25519:{device}"): "s" } },
        })
    }

    #[tokio::test]
    async fn upload_query_claim_and_changes_over_http() {
        let app = app();
        let (alice, alice_id, alice_dev) = account(&app, "alice").await;
        let (bob, bob_id, _) = account(&app, "bob").await;
        let (_, sync) = call(&app, "GET", "/_matrix/client/v3/sync", Some(&bob), None).await;
        let from = sync["next_batch"].as_str().unwrap().to_owned();

        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&alice),
            Some(json!({
                "device_keys": device_keys(&alice_id, &alice_dev),
                "one_time_keys": { "signed_curve25519:AAAA": { "key": "k1", "signatures": {} } },
                "org.matrix.msc2732.fallback_keys": { "signed_curve25519:FB": { "key": "f", "fallback": true } },
            })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 1);

        // Keys for someone else's device are refused.
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&alice),
            Some(json!({ "device_keys": device_keys(&alice_id, "OTHER") })),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errcode"], "M_INVALID_PARAM");

        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/r0/keys/query",
            Some(&bob),
            Some(json!({ "device_keys": { &alice_id: [] } })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["failures"], json!({}));
        assert_eq!(
            body["device_keys"][&alice_id][&alice_dev]["keys"][format!("curve25519:{alice_dev}")],
            "c"
        );

        let claim = json!({ "one_time_keys": { &alice_id: { &alice_dev: "signed_curve25519" } } });
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/keys/claim",
            Some(&bob),
            Some(claim.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["one_time_keys"][&alice_id][&alice_dev]["signed_curve25519:AAAA"]["key"],
            "k1"
        );
        let (_, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/keys/claim",
            Some(&bob),
            Some(claim),
        )
        .await;
        assert_eq!(
            body["one_time_keys"][&alice_id][&alice_dev]["signed_curve25519:FB"]["key"],
            "f"
        );

        // Alice and bob share no room: no change for bob. Then they do.
        let (_, sync) = call(&app, "GET", "/_matrix/client/v3/sync", Some(&bob), None).await;
        let to = sync["next_batch"].as_str().unwrap().to_owned();
        let path = format!("/_matrix/client/v3/keys/changes?from={from}&to={to}");
        let (status, body) = call(&app, "GET", &path, Some(&bob), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!({ "changed": [], "left": [] }));
        let (_, room) = call(
            &app,
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&alice),
            Some(json!({ "preset": "public_chat" })),
        )
        .await;
        let room = room["room_id"].as_str().unwrap().to_owned();
        let (status, _) = call(
            &app,
            "POST",
            &format!("/_matrix/client/v3/join/{room}"),
            Some(&bob),
            Some(json!({})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (_, sync) = call(&app, "GET", "/_matrix/client/v3/sync", Some(&bob), None).await;
        let to = sync["next_batch"].as_str().unwrap().to_owned();
        let path = format!("/_matrix/client/v3/keys/changes?from={from}&to={to}");
        let (_, body) = call(&app, "GET", &path, Some(&bob), None).await;
        assert!(body["changed"]
            .as_array()
            .unwrap()
            .contains(&json!(alice_id)));
        let (status, body) = call(
            &app,
            "GET",
            "/_matrix/client/v3/keys/changes?from=bogus&to=s1",
            Some(&bob),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errcode"], "M_INVALID_PARAM");
        let _ = bob_id;
    }

    #[tokio::test]
    async fn device_signing_upload_needs_uia_only_to_replace() {
        let app = app();
        let (alice, alice_id, _) = account(&app, "alice").await;
        let master = |k: &str| {
            json!({ "master_key": { "user_id": &alice_id, "usage": ["master"],
                "keys": { format!("ed25519:{k}"): k } } })
        };
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&alice),
            Some(master("AAAA")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&alice),
            Some(master("BBBB")),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let session = body["session"].as_str().unwrap().to_owned();
        assert_eq!(body["flows"][0]["stages"][0], "m.login.password");
        let mut with_auth = master("BBBB");
        with_auth["auth"] = json!({ "type": "m.login.password", "session": session,
            "identifier": { "type": "m.id.user", "user": "alice" }, "password": "pw" });
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&alice),
            Some(with_auth),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(&alice),
            Some(json!({ "device_keys": { &alice_id: [] } })),
        )
        .await;
        assert_eq!(
            body["master_keys"][&alice_id]["keys"]["ed25519:BBBB"],
            "BBBB"
        );
        // A self-signing key without a valid signature by the master key is refused.
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&alice),
            Some(
                json!({ "self_signing_key": { "user_id": &alice_id, "usage": ["self_signing"],
                "keys": { "ed25519:CCCC": "CCCC" } } }),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["errcode"], "M_INVALID_SIGNATURE");
    }
}
