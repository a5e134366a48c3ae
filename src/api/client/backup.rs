//! Server-side key backup: versions and room keys.

use std::{collections::BTreeMap, sync::Arc};

use axum::extract::State;
use ruma::{
    api::client::backup::{
        add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
        create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
        delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
        get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
        update_backup_version, BackupAlgorithm, RoomKeyBackup,
    },
    serde::Raw,
    OwnedRoomId, UInt,
};
use serde_json::{json, Value};

use crate::{
    api::ruma::{raw, RouterExt, Ruma},
    e2ee::{BackupCounts, BackupVersion},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router
        .ruma(create_version)
        .ruma(latest_version)
        .ruma(get_version)
        .ruma(update_version)
        .ruma(delete_version)
        .ruma(put_keys)
        .ruma(put_room_keys)
        .ruma(put_session_key)
        .ruma(get_keys)
        .ruma(get_room_keys)
        .ruma(get_session_key)
        .ruma(delete_keys)
        .ruma(delete_room_keys)
        .ruma(delete_session_key)
}

fn uint(n: u64) -> UInt {
    UInt::try_from(n).unwrap_or(UInt::MAX)
}

fn algorithm(v: &BackupVersion) -> Result<Raw<BackupAlgorithm>> {
    raw(&json!({ "algorithm": v.algorithm, "auth_data": v.auth_data }))
}

/// The `{algorithm, auth_data, …}` body as JSON.
fn body(algorithm: &Raw<BackupAlgorithm>) -> Result<Value> {
    algorithm
        .deserialize_as_unchecked()
        .map_err(|e| Error::bad_json(format!("invalid backup version: {e}")))
}

fn values<T>(map: &BTreeMap<String, Raw<T>>) -> Result<BTreeMap<String, Value>> {
    map.iter()
        .map(|(k, v)| {
            v.deserialize_as_unchecked::<Value>()
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::bad_json(format!("invalid key data: {e}")))
        })
        .collect()
}

fn raws<T>(map: BTreeMap<String, Value>) -> Result<BTreeMap<String, Raw<T>>> {
    map.into_iter().map(|(k, v)| Ok((k, raw(&v)?))).collect()
}

fn rooms_out(
    rooms: BTreeMap<OwnedRoomId, BTreeMap<String, Value>>,
) -> Result<BTreeMap<OwnedRoomId, RoomKeyBackup>> {
    rooms
        .into_iter()
        .map(|(room, sessions)| Ok((room, RoomKeyBackup::new(raws(sessions)?))))
        .collect()
}

/// `POST /_matrix/client/v3/room_keys/version`
async fn create_version(
    State(services): State<Arc<Services>>,
    req: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response> {
    let user = req.sender_user()?;
    let version = services
        .e2ee
        .create_backup(user, &body(&req.body.algorithm)?)
        .await?;
    Ok(create_backup_version::v3::Response::new(version))
}

/// `GET /_matrix/client/v3/room_keys/version`
async fn latest_version(
    State(services): State<Arc<Services>>,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response> {
    let v = services
        .e2ee
        .current_backup(req.sender_user()?)?
        .ok_or_else(|| Error::not_found("No current backup version"))?;
    Ok(get_latest_backup_info::v3::Response::new(
        algorithm(&v)?,
        uint(v.count),
        v.etag.to_string(),
        v.version.to_string(),
    ))
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`
async fn get_version(
    State(services): State<Arc<Services>>,
    req: Ruma<get_backup_info::v3::Request>,
) -> Result<get_backup_info::v3::Response> {
    let v = services
        .e2ee
        .backup(req.sender_user()?, &req.body.version)?;
    Ok(get_backup_info::v3::Response::new(
        algorithm(&v)?,
        uint(v.count),
        v.etag.to_string(),
        v.version.to_string(),
    ))
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`
async fn update_version(
    State(services): State<Arc<Services>>,
    req: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response> {
    let user = req.sender_user()?;
    services
        .e2ee
        .update_backup(user, &req.body.version, &body(&req.body.algorithm)?)
        .await?;
    Ok(update_backup_version::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`
async fn delete_version(
    State(services): State<Arc<Services>>,
    req: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response> {
    services
        .e2ee
        .delete_backup(req.sender_user()?, &req.body.version)
        .await?;
    Ok(delete_backup_version::v3::Response::new())
}

macro_rules! counts_response {
    ($module:ident, $counts:expr) => {{
        let BackupCounts { etag, count } = $counts;
        $module::v3::Response::new(etag, uint(count))
    }};
}

/// `PUT /_matrix/client/v3/room_keys/keys`
async fn put_keys(
    State(services): State<Arc<Services>>,
    req: Ruma<add_backup_keys::v3::Request>,
) -> Result<add_backup_keys::v3::Response> {
    let user = req.sender_user()?;
    let mut rooms = BTreeMap::new();
    for (room, backup) in &req.body.rooms {
        rooms.insert(room.clone(), values(&backup.sessions)?);
    }
    let counts = services
        .e2ee
        .put_backup_keys(user, &req.body.version, &rooms)
        .await?;
    Ok(counts_response!(add_backup_keys, counts))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}`
async fn put_room_keys(
    State(services): State<Arc<Services>>,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let user = req.sender_user()?;
    let rooms = BTreeMap::from([(req.body.room_id.clone(), values(&req.body.sessions)?)]);
    let counts = services
        .e2ee
        .put_backup_keys(user, &req.body.version, &rooms)
        .await?;
    Ok(counts_response!(add_backup_keys_for_room, counts))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
async fn put_session_key(
    State(services): State<Arc<Services>>,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let user = req.sender_user()?;
    let data: Value = req
        .body
        .session_data
        .deserialize_as_unchecked()
        .map_err(|e| Error::bad_json(format!("invalid key data: {e}")))?;
    let rooms = BTreeMap::from([(
        req.body.room_id.clone(),
        BTreeMap::from([(req.body.session_id.clone(), data)]),
    )]);
    let counts = services
        .e2ee
        .put_backup_keys(user, &req.body.version, &rooms)
        .await?;
    Ok(counts_response!(add_backup_keys_for_session, counts))
}

/// `GET /_matrix/client/v3/room_keys/keys`
async fn get_keys(
    State(services): State<Arc<Services>>,
    req: Ruma<get_backup_keys::v3::Request>,
) -> Result<get_backup_keys::v3::Response> {
    let rooms = services
        .e2ee
        .get_backup_keys(req.sender_user()?, &req.body.version, None, None)?;
    Ok(get_backup_keys::v3::Response::new(rooms_out(rooms)?))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}`
async fn get_room_keys(
    State(services): State<Arc<Services>>,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let room = &req.body.room_id;
    let mut rooms =
        services
            .e2ee
            .get_backup_keys(req.sender_user()?, &req.body.version, Some(room), None)?;
    let sessions = rooms.remove(room).unwrap_or_default();
    Ok(get_backup_keys_for_room::v3::Response::new(raws(sessions)?))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
async fn get_session_key(
    State(services): State<Arc<Services>>,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let room = &req.body.room_id;
    let session = &req.body.session_id;
    let data = services
        .e2ee
        .get_backup_keys(
            req.sender_user()?,
            &req.body.version,
            Some(room),
            Some(session),
        )?
        .remove(room)
        .and_then(|mut s| s.remove(session))
        .ok_or_else(|| Error::not_found("No backed-up key for this session"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(raw(&data)?))
}

/// `DELETE /_matrix/client/v3/room_keys/keys`
async fn delete_keys(
    State(services): State<Arc<Services>>,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response> {
    let counts = services
        .e2ee
        .delete_backup_keys(req.sender_user()?, &req.body.version, None, None)
        .await?;
    Ok(counts_response!(delete_backup_keys, counts))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}`
async fn delete_room_keys(
    State(services): State<Arc<Services>>,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let counts = services
        .e2ee
        .delete_backup_keys(
            req.sender_user()?,
            &req.body.version,
            Some(&req.body.room_id),
            None,
        )
        .await?;
    Ok(counts_response!(delete_backup_keys_for_room, counts))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
async fn delete_session_key(
    State(services): State<Arc<Services>>,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let counts = services
        .e2ee
        .delete_backup_keys(
            req.sender_user()?,
            &req.body.version,
            Some(&req.body.room_id),
            Some(&req.body.session_id),
        )
        .await?;
    Ok(counts_response!(delete_backup_keys_for_session, counts))
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use serde_json::json;

    use crate::api::client::account::tests::{app, call, register_user};

    #[tokio::test]
    async fn backup_round_trip_over_http() {
        let app = app();
        let alice = register_user(&app, "alice").await;
        let t = Some(alice.as_str());
        let (status, body) =
            call(&app, "GET", "/_matrix/client/v3/room_keys/version", t, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["errcode"], "M_NOT_FOUND");
        let algorithm = json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "auth_data": { "public_key": "pk", "signatures": {} } });
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/room_keys/version",
            t,
            Some(algorithm.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["version"], "1");

        let key = json!({ "first_message_index": 1, "forwarded_count": 0, "is_verified": false,
            "session_data": { "ephemeral": "e", "ciphertext": "c", "mac": "m" } });
        let (status, body) = call(
            &app,
            "PUT",
            "/_matrix/client/v3/room_keys/keys/!room:localhost/sess1?version=1",
            t,
            Some(key.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["count"], 1);
        let etag = body["etag"].clone();

        let (status, body) =
            call(&app, "GET", "/_matrix/client/v3/room_keys/version", t, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["version"], "1");
        assert_eq!(body["count"], 1);
        assert_eq!(body["etag"], etag);
        assert_eq!(body["auth_data"]["public_key"], "pk");
        assert_eq!(body["algorithm"], "m.megolm_backup.v1.curve25519-aes-sha2");

        let (status, body) = call(
            &app,
            "GET",
            "/_matrix/client/v3/room_keys/keys?version=1",
            t,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["rooms"]["!room:localhost"]["sessions"]["sess1"], key);
        let (status, body) = call(
            &app,
            "GET",
            "/_matrix/client/v3/room_keys/keys/!room:localhost/nope?version=1",
            t,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (status, body) = call(
            &app,
            "GET",
            "/_matrix/client/v3/room_keys/keys/!other:localhost?version=1",
            t,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!({ "sessions": {} }));

        // Stale version.
        call(
            &app,
            "POST",
            "/_matrix/client/v3/room_keys/version",
            t,
            Some(algorithm),
        )
        .await;
        let (status, body) = call(
            &app,
            "PUT",
            "/_matrix/client/v3/room_keys/keys/!room:localhost/sess1?version=1",
            t,
            Some(key),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["errcode"], "M_WRONG_ROOM_KEYS_VERSION");
        assert_eq!(body["current_version"], "2");

        let (status, _) = call(
            &app,
            "DELETE",
            "/_matrix/client/v3/room_keys/version/2",
            t,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = call(
            &app,
            "GET",
            "/_matrix/client/v3/room_keys/version/2",
            t,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body) = call(
            &app,
            "DELETE",
            "/_matrix/client/v3/room_keys/keys?version=1",
            t,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["count"], 0);
    }

    /// Clients that label JSON as a form (curl's default) can still create backups.
    #[tokio::test]
    async fn create_version_without_json_content_type() {
        use tower::ServiceExt;
        let app = app();
        let alice = register_user(&app, "alice").await;
        let req = http::Request::builder()
            .method("POST")
            .uri("/_matrix/client/v3/room_keys/version")
            .header("authorization", format!("Bearer {alice}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(
                json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {} })
                    .to_string(),
            ))
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}
