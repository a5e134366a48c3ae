//! Unit-test helpers for the rooms domain.

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, UserId};
use serde_json::json;

use crate::{
    config::Config,
    rooms::{CreateRoom, NewEvent},
    services::Services,
};

/// In-memory services with a room `@alice:localhost` created and one message she sent:
/// the services, alice, the room and the message's id.
pub(crate) async fn room_with_message() -> (
    std::sync::Arc<Services>,
    OwnedUserId,
    OwnedRoomId,
    OwnedEventId,
) {
    let s = Services::in_memory(Config::default()).unwrap();
    let alice = UserId::parse("@alice:localhost").unwrap();
    let room = s
        .rooms
        .create_room(&alice, CreateRoom::default())
        .await
        .unwrap();
    let content = json!({"msgtype": "m.text", "body": "x"});
    let (event, _) = s
        .rooms
        .send_to(&room, &alice, NewEvent::message("m.room.message", content))
        .await
        .unwrap();
    (s, alice, room, event)
}
