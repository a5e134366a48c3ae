//! Thread updates across the user's joined rooms (MSC4360's companion endpoint, unstable
//! `io.element.msc4360`): `GET /thread_updates?dir=b&from&to&limit` pages back through the
//! threads with replies between `to` and `from`, newest reply first, each with its root.
//! The sliding-sync extension is in `crate::sync::sliding`.

use std::sync::Arc;

use axum::{extract::State, routing::get, Json, Router};
use serde_json::{json, Value};

use crate::{
    api::ruma::RawJson,
    rooms::{Token, UpdatesQuery, MAX_THREAD_UPDATES},
    services::Services,
    Error, Result,
};

const PATH: &str = "/_matrix/client/unstable/io.element.msc4360/thread_updates";

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router.route(PATH, get(thread_updates_route))
}

/// `GET /io.element.msc4360/thread_updates`: `from` (a `prev_batch` of the extension or a
/// `next_batch` of this endpoint; default now) is included, `to` (a sliding-sync `pos` or
/// a token of ours; default the beginning) is not.
async fn thread_updates_route(
    State(services): State<Arc<Services>>,
    req: RawJson,
) -> Result<Json<Value>> {
    match req.query.get("dir").map(String::as_str) {
        Some("b") => {}
        _ => return Err(Error::invalid_param("dir=b is required")),
    }
    let now = services.rooms.current_pos();
    let until = match req.query.get("from") {
        Some(t) => Token::parse(t)?.0.min(now),
        None => now,
    };
    let after = match req.query.get("to") {
        None => 0,
        Some(t) => match services.sync.sliding_pos_token(&req.session, t) {
            Some(token) => token.timeline,
            None => {
                Token::parse(t)
                    .map_err(|_| Error::invalid_param(format!("unknown token {t:?}")))?
                    .0
            }
        },
    };
    let limit = match req.query.get("limit") {
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n > 0 => n.min(MAX_THREAD_UPDATES),
            _ => return Err(Error::invalid_param("limit must be a positive integer")),
        },
        None => MAX_THREAD_UPDATES,
    };
    let user = &req.session.user_id;
    let page = services.rooms.thread_updates(
        user,
        &UpdatesQuery {
            after,
            until,
            limit,
            served: None,
        },
    )?;
    let chunk = services
        .rooms
        .thread_updates_json(user, &page.updates, true)?;
    let mut out = json!({ "chunk": chunk });
    if let Some(older) = page.older_from {
        out["next_batch"] = json!(older.to_string());
    }
    Ok(Json(out))
}
