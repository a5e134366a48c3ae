//! Rooms an administrator blocked: nobody may join, be invited or knock (403
//! `M_FORBIDDEN`), whether by `/join`, `/invite` or a member event written directly; a
//! policy inside `append` enforces it, so every path is covered. Leaving, kicks and bans
//! still work. A room may be blocked before it exists here.

use ruma::{events::TimelineEventType, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{RoomGuard, RoomPolicy, RoomRecord, RoomsService};
use crate::{events::Pdu, storage::Batch, Error, Result};

/// Who blocked a room, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomBlock {
    /// The administrator (absent when the operator token did it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<OwnedUserId>,
    /// When, ms since the epoch.
    pub ts: u64,
}

impl RoomsService {
    /// The block on a room, if any.
    pub fn room_block(&self, room_id: &RoomId) -> Result<Option<RoomBlock>> {
        self.storage
            .trees
            .blocked_rooms
            .get_json(room_id.as_bytes())
    }

    /// Blocks (`by` is the administrator) or unblocks a room; durable on return.
    pub async fn set_room_blocked(
        &self,
        room_id: &RoomId,
        blocked: bool,
        by: Option<&UserId>,
    ) -> Result<()> {
        let tree = &self.storage.trees.blocked_rooms;
        let mut batch = Batch::new();
        if blocked {
            if tree.contains(room_id.as_bytes())? {
                return Ok(());
            }
            let block = RoomBlock {
                user_id: by.map(ToOwned::to_owned),
                ts: u64::from(ruma::MilliSecondsSinceUnixEpoch::now().0),
            };
            batch.insert_json(tree, room_id.as_bytes(), &block)?;
        } else {
            batch.remove(tree, room_id.as_bytes());
        }
        self.storage.commit(batch)?;
        self.storage.durable().await?;
        tracing::info!(room = %room_id, blocked, "room block changed");
        Ok(())
    }
}

/// The policy that refuses every membership but `leave` and `ban` in blocked rooms.
pub struct BlockedRoomPolicy;

impl RoomPolicy for BlockedRoomPolicy {
    fn name(&self) -> &'static str {
        "blocked_rooms"
    }

    fn check(
        &self,
        rooms: &RoomsService,
        guard: &RoomGuard,
        _room: &RoomRecord,
        event: &Pdu,
    ) -> Result<()> {
        if event.kind != TimelineEventType::RoomMember {
            return Ok(());
        }
        let content: Value = serde_json::from_str(event.content.get())?;
        if matches!(
            content.get("membership").and_then(Value::as_str),
            Some("leave" | "ban")
        ) {
            return Ok(());
        }
        if rooms.room_block(guard.room_id())?.is_some() {
            return Err(Error::forbidden(
                "This room has been blocked on this server",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ruma::UserId;

    use crate::{
        config::Config,
        rooms::{CreateRoom, MemberProfile},
        services::Services,
    };

    #[tokio::test]
    async fn a_blocked_room_refuses_joins_but_lets_members_leave() {
        let s = Services::in_memory(Config::default()).unwrap();
        let alice = UserId::parse("@alice:localhost").unwrap();
        let bob = UserId::parse("@bob:localhost").unwrap();
        let req = CreateRoom {
            preset: Some("public_chat".into()),
            ..CreateRoom::default()
        };
        let room = s.rooms.create_room(&alice, req).await.unwrap();
        s.rooms
            .set_room_blocked(&room, true, Some(&alice))
            .await
            .unwrap();
        assert_eq!(
            s.rooms.room_block(&room).unwrap().unwrap().user_id,
            Some(alice.clone())
        );
        let profile = MemberProfile::default();
        let refused = s.rooms.join(&room, &bob, &profile, None).await.unwrap_err();
        assert_eq!(refused.errcode(), "M_FORBIDDEN");
        assert_eq!(
            s.rooms.membership(&room, &bob).unwrap(),
            None,
            "nothing written"
        );
        s.rooms.leave(&room, &alice, None).await.unwrap();
        s.rooms.set_room_blocked(&room, false, None).await.unwrap();
        assert!(s.rooms.room_block(&room).unwrap().is_none());
        s.rooms.join(&room, &bob, &profile, None).await.unwrap();
    }
}
