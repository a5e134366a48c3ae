//! Relations: `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}` and its
//! `/{relType}` and `/{relType}/{eventType}` forms; threads:
//! `GET /_matrix/client/v1/rooms/{roomId}/threads`.

use std::sync::Arc;

use axum::{extract::State, Router};
use ruma::{
    api::{
        client::{
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            threads::get_threads,
        },
        Direction as RumaDirection,
    },
    events::AnyMessageLikeEvent,
    serde::Raw,
    DeviceId, EventId, RoomId, UInt, UserId,
};
use serde_json::Value;

use crate::{
    api::ruma::{raw, RouterExt, Ruma},
    rooms::{Direction, RelationsQuery, Token},
    services::Services,
    Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .ruma(relations_route)
        .ruma(relations_by_type_route)
        .ruma(relations_by_type_and_event_type_route)
        .ruma(threads_route)
}

/// Synapse's default page size for relations.
const DEFAULT_LIMIT: usize = 5;

/// Threads per page when the client names no limit.
const DEFAULT_THREADS_LIMIT: usize = 10;

/// What the three routes share.
struct Params<'a> {
    room_id: &'a RoomId,
    event_id: &'a EventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    dir: RumaDirection,
    limit: Option<UInt>,
}

/// Reads a page of relations as `user` may see them, in client format with the
/// reader's `unsigned.membership` and transaction ids.
fn page(
    services: &Services,
    user: &UserId,
    device: &DeviceId,
    p: Params<'_>,
) -> Result<(Vec<Raw<AnyMessageLikeEvent>>, Option<String>)> {
    let query = RelationsQuery {
        rel_type: p.rel_type.as_deref(),
        event_type: p.event_type.as_deref(),
        from: p.from.map(Token::parse).transpose()?,
        to: p.to.map(Token::parse).transpose()?,
        dir: match p.dir {
            RumaDirection::Backward => Direction::Backward,
            RumaDirection::Forward => Direction::Forward,
        },
        limit: p.limit.map_or(DEFAULT_LIMIT, |l| u64::from(l) as usize),
    };
    let found = services
        .rooms
        .relations(p.room_id, user, p.event_id, &query)?;
    let mut chunk: Vec<Value> = found.chunk.iter().map(|p| p.to_client_event()).collect();
    services
        .rooms
        .add_transaction_ids(&mut chunk, user, device)?;
    services.rooms.add_unsigned(p.room_id, user, &mut chunk)?;
    Ok((
        chunk.iter().map(raw).collect::<Result<_>>()?,
        found.next_batch.map(|t| t.to_string()),
    ))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}`
async fn relations_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_relating_events::v1::Request>,
) -> Result<get_relating_events::v1::Response> {
    let b = &req.body;
    let (chunk, next) = page(
        &services,
        req.sender_user()?,
        req.sender_device()?,
        Params {
            room_id: &b.room_id,
            event_id: &b.event_id,
            rel_type: None,
            event_type: None,
            from: b.from.as_deref(),
            to: b.to.as_deref(),
            dir: b.dir,
            limit: b.limit,
        },
    )?;
    let mut res = get_relating_events::v1::Response::new(chunk);
    res.next_batch = next;
    Ok(res)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}`
async fn relations_by_type_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type::v1::Response> {
    let b = &req.body;
    let (chunk, next) = page(
        &services,
        req.sender_user()?,
        req.sender_device()?,
        Params {
            room_id: &b.room_id,
            event_id: &b.event_id,
            rel_type: Some(b.rel_type.to_string()),
            event_type: None,
            from: b.from.as_deref(),
            to: b.to.as_deref(),
            dir: b.dir,
            limit: b.limit,
        },
    )?;
    let mut res = get_relating_events_with_rel_type::v1::Response::new(chunk);
    res.next_batch = next;
    Ok(res)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}`
async fn relations_by_type_and_event_type_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    let b = &req.body;
    let (chunk, next) = page(
        &services,
        req.sender_user()?,
        req.sender_device()?,
        Params {
            room_id: &b.room_id,
            event_id: &b.event_id,
            rel_type: Some(b.rel_type.to_string()),
            event_type: Some(b.event_type.to_string()),
            from: b.from.as_deref(),
            to: b.to.as_deref(),
            dir: b.dir,
            limit: b.limit,
        },
    )?;
    let mut res = get_relating_events_with_rel_type_and_event_type::v1::Response::new(chunk);
    res.next_batch = next;
    Ok(res)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/threads`
async fn threads_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_threads::v1::Request>,
) -> Result<get_threads::v1::Response> {
    let user = req.sender_user()?;
    let b = &req.body;
    let participated_only = match &b.include {
        get_threads::v1::IncludeThreads::All => false,
        get_threads::v1::IncludeThreads::Participated => true,
        other => {
            return Err(crate::Error::invalid_param(format!(
                "include must be all or participated, not {}",
                other.as_str()
            )))
        }
    };
    let page = services.rooms.threads(
        &b.room_id,
        user,
        participated_only,
        b.from.as_deref().map(Token::parse).transpose()?,
        b.limit
            .map_or(DEFAULT_THREADS_LIMIT, |l| u64::from(l) as usize),
    )?;
    let mut chunk: Vec<Value> = page.chunk.iter().map(|p| p.to_client_event()).collect();
    services
        .rooms
        .add_transaction_ids(&mut chunk, user, req.sender_device()?)?;
    services.rooms.add_unsigned(&b.room_id, user, &mut chunk)?;
    let mut res = get_threads::v1::Response::new(chunk.iter().map(raw).collect::<Result<_>>()?);
    res.next_batch = page.next_batch.map(|t| t.to_string());
    Ok(res)
}
