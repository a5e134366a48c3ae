//! Thread subscriptions (MSC4306, unstable `io.element.msc4306`):
//! `PUT`/`GET`/`DELETE /rooms/{roomId}/thread/{threadRoot}/subscription`, and the
//! companion feed of changes (MSC4308) `GET /io.element.msc4308/thread_subscriptions`.
//! The sliding-sync extension is in `crate::sync::sliding`.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    routing::{get, put},
    Json, Router,
};
use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId, UserId};
use serde_json::{json, Value};

use crate::{
    api::ruma::RawJson,
    services::Services,
    sync::SyncToken,
    users::{Subscription, DEFAULT_FEED_LIMIT},
    Error, Result,
};

const SUBSCRIPTION_PATH: &str =
    "/_matrix/client/unstable/io.element.msc4306/rooms/{room_id}/thread/{thread_root}/subscription";
const FEED_PATH: &str = "/_matrix/client/unstable/io.element.msc4308/thread_subscriptions";

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .route(
            SUBSCRIPTION_PATH,
            put(subscribe_route)
                .get(get_route)
                .delete(unsubscribe_route),
        )
        .route(FEED_PATH, get(feed_route))
}

fn ids(room: &str, root: &str) -> Result<(OwnedRoomId, OwnedEventId)> {
    let room =
        RoomId::parse(room).map_err(|e| Error::invalid_param(format!("invalid room id: {e}")))?;
    let root =
        EventId::parse(root).map_err(|e| Error::invalid_param(format!("invalid event id: {e}")))?;
    Ok((room, root))
}

/// The thread root as `user` may see it; 404 `M_NOT_FOUND` for a thread that does not
/// exist or is not theirs to see (also when they may not read the room at all).
fn visible_root(services: &Services, room: &RoomId, user: &UserId, root: &EventId) -> Result<()> {
    match services.rooms.visible_event(room, user, root) {
        Ok(_) => Ok(()),
        Err(e) if e.errcode() == "M_FORBIDDEN" => Err(Error::not_found("Thread not found")),
        Err(e) => Err(e),
    }
}

/// `PUT …/thread/{threadRoot}/subscription` `{"automatic"?: cause event id}`.
async fn subscribe_route(
    State(services): State<Arc<Services>>,
    Path((room, root)): Path<(String, String)>,
    req: RawJson,
) -> Result<Json<Value>> {
    let (room, root) = ids(&room, &root)?;
    let user = &req.session.user_id;
    visible_root(&services, &room, user, &root)?;
    let wanted = match req.body.get("automatic") {
        None | Some(Value::Null) => Subscription::Manual,
        Some(Value::String(cause)) => {
            let cause = EventId::parse(cause)
                .map_err(|e| Error::invalid_param(format!("invalid `automatic` event id: {e}")))?;
            let cause_pos = services
                .rooms
                .thread_event_pos(&room, user, &root, &cause)?
                .ok_or_else(|| {
                    Error::matrix(
                        crate::ErrorKind::Invalid,
                        "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD",
                        "The cause event is not in this thread",
                    )
                })?;
            Subscription::Automatic { cause_pos }
        }
        Some(_) => return Err(Error::bad_json("`automatic` must be an event id")),
    };
    services
        .users
        .subscribe_thread(user, &room, &root, wanted)?;
    Ok(Json(json!({})))
}

/// `GET …/thread/{threadRoot}/subscription`: `{"automatic": bool}`, 404 when not subscribed.
async fn get_route(
    State(services): State<Arc<Services>>,
    Path((room, root)): Path<(String, String)>,
    req: RawJson,
) -> Result<Json<Value>> {
    let (room, root) = ids(&room, &root)?;
    let user = &req.session.user_id;
    visible_root(&services, &room, user, &root)?;
    match services.users.thread_subscription(user, &room, &root)? {
        Some(automatic) => Ok(Json(json!({ "automatic": automatic }))),
        None => Err(Error::not_found("Not subscribed to this thread")),
    }
}

/// `DELETE …/thread/{threadRoot}/subscription` (idempotent).
async fn unsubscribe_route(
    State(services): State<Arc<Services>>,
    Path((room, root)): Path<(String, String)>,
    req: RawJson,
) -> Result<Json<Value>> {
    let (room, root) = ids(&room, &root)?;
    let user = &req.session.user_id;
    visible_root(&services, &room, user, &root)?;
    let seen = services.rooms.current_pos();
    services
        .users
        .unsubscribe_thread(user, &room, &root, seen)?;
    Ok(Json(json!({})))
}

/// A feed position token: a number, or a sliding-sync `pos` (its user-data part).
fn feed_pos(token: &str) -> Result<u64> {
    match token.parse::<u64>() {
        Ok(pos) => Ok(pos),
        Err(_) => Ok(SyncToken::parse(token)
            .map_err(|_| Error::invalid_param(format!("invalid token {token:?}")))?
            .userdata),
    }
}

/// `GET /io.element.msc4308/thread_subscriptions?dir=b&from&to&limit`: changes from `from`
/// (default: now) back to `to` (exclusive; default: the beginning), newest first, with
/// `end` to continue from when more remain.
async fn feed_route(State(services): State<Arc<Services>>, req: RawJson) -> Result<Json<Value>> {
    if req.query.get("dir").is_some_and(|d| d != "b") {
        return Err(Error::invalid_param("only dir=b is supported"));
    }
    let now = services.users.current_userdata_pos();
    let from = match req.query.get("from") {
        Some(t) => feed_pos(t)?.min(now),
        None => now,
    };
    // `to` is usually the `pos` of the sliding sync whose extension was cut short.
    let to = match req.query.get("to") {
        Some(t) => match services.sync.sliding_pos_token(&req.session, t) {
            Some(token) => token.userdata,
            None => feed_pos(t)?,
        },
        None => 0,
    };
    let limit = match req.query.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| Error::invalid_param("invalid limit"))?
            .clamp(1, DEFAULT_FEED_LIMIT),
        None => DEFAULT_FEED_LIMIT,
    };
    let changes =
        services
            .users
            .thread_subscription_changes(&req.session.user_id, to, from, limit)?;
    let mut out = changes.to_json();
    if let Some(older) = changes.older_from {
        out.insert("end".into(), json!(older.to_string()));
    }
    Ok(Json(Value::Object(out)))
}
