//! Typing notifications, receipts and read markers.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, Router};
use ruma::{
    api::client::{
        read_marker::set_read_marker, receipt::create_receipt, typing::create_typing_event,
    },
    events::receipt::ReceiptThread,
    EventId, RoomId, UserId,
};
use serde_json::json;

use crate::{
    api::ruma::{RouterExt, Ruma},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .ruma(typing_route)
        .ruma(receipt_route)
        .ruma(read_markers_route)
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
async fn typing_route(
    State(services): State<Arc<Services>>,
    req: Ruma<create_typing_event::v3::Request>,
) -> Result<create_typing_event::v3::Response> {
    let user = req.sender_user()?;
    let b = &req.body;
    if &b.user_id != user {
        return Err(Error::forbidden("You may only set your own typing state"));
    }
    services.rooms.check_joined(&b.room_id, user)?;
    // Privacy mode: the user's typing reaches nobody.
    if !services.users.sends_acknowledgements(user)? {
        return Ok(create_typing_event::v3::Response::new());
    }
    match &b.state {
        create_typing_event::v3::Typing::Yes(info) => {
            services
                .rooms
                .set_typing(&b.room_id, user, true, info.timeout)?
        }
        _ => services
            .rooms
            .set_typing(&b.room_id, user, false, Duration::ZERO)?,
    }
    Ok(create_typing_event::v3::Response::new())
}

fn check_event_in_room(services: &Services, room_id: &RoomId, event_id: &EventId) -> Result<()> {
    match services.rooms.get_pdu(event_id)? {
        Some(pdu) if pdu.room_id == room_id => Ok(()),
        _ => Err(Error::not_found("Event not found in this room")),
    }
}

async fn set_fully_read(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
    event_id: &EventId,
) -> Result<()> {
    check_event_in_room(services, room_id, event_id)?;
    services
        .users
        .set_account_data(
            user,
            Some(room_id),
            "m.fully_read",
            json!({ "event_id": event_id }),
        )
        .await
}

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`
async fn receipt_route(
    State(services): State<Arc<Services>>,
    req: Ruma<create_receipt::v3::Request>,
) -> Result<create_receipt::v3::Response> {
    let user = req.sender_user()?;
    let b = &req.body;
    services.rooms.check_joined(&b.room_id, user)?;
    let kind = b.receipt_type.to_string();
    if kind == "m.fully_read" {
        set_fully_read(&services, &b.room_id, user, &b.event_id).await?;
        return Ok(create_receipt::v3::Response::new());
    }
    if !crate::rooms::RECEIPT_TYPES.contains(&kind.as_str()) {
        return Err(Error::invalid_param(format!("unknown receipt type {kind}")));
    }
    check_event_in_room(&services, &b.room_id, &b.event_id)?;
    let kind = services.users.recorded_receipt_type(user, &kind)?;
    let thread = match &b.thread {
        ReceiptThread::Unthreaded => None,
        ReceiptThread::Main => Some("main".to_owned()),
        ReceiptThread::Thread(id) => Some(id.to_string()),
        _ => None,
    };
    services
        .rooms
        .set_receipt(&b.room_id, user, kind, &b.event_id, thread.as_deref())
        .await?;
    Ok(create_receipt::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`
async fn read_markers_route(
    State(services): State<Arc<Services>>,
    req: Ruma<set_read_marker::v3::Request>,
) -> Result<set_read_marker::v3::Response> {
    let user = req.sender_user()?;
    let b = &req.body;
    services.rooms.check_joined(&b.room_id, user)?;
    if let Some(id) = &b.fully_read {
        set_fully_read(&services, &b.room_id, user, id).await?;
    }
    for (kind, id) in [
        ("m.read", &b.read_receipt),
        ("m.read.private", &b.private_read_receipt),
    ] {
        if let Some(id) = id {
            check_event_in_room(&services, &b.room_id, id)?;
            let kind = services.users.recorded_receipt_type(user, kind)?;
            services
                .rooms
                .set_receipt(&b.room_id, user, kind, id, None)
                .await?;
        }
    }
    Ok(set_read_marker::v3::Response::new())
}
