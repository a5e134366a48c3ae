//! The rooms a user may see in sliding sync lists: candidates, their bump stamps, DMs and
//! list filters.

use std::collections::HashSet;

use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::Value;

use super::{BUMP_SCAN, BUMP_TYPES};
use crate::{
    rooms::{Direction, Membership},
    sync::SyncService,
    Result,
};

/// A room the user may see in lists.
pub(super) struct Candidate {
    pub(super) room_id: OwnedRoomId,
    pub(super) membership: Membership,
    /// Position of the membership event.
    pub(super) membership_pos: u64,
    pub(super) bump: u64,
}

impl SyncService {
    /// The position of the latest event that bumps the room in the list.
    pub(super) fn bump_stamp(&self, room_id: &RoomId, cap: u64, fallback: u64) -> Result<u64> {
        let (events, _) =
            self.rooms
                .timeline_range(room_id, 0, cap, Direction::Backward, BUMP_SCAN, None)?;
        for (pos, pdu) in &events {
            if BUMP_TYPES.contains(&pdu.kind.to_string().as_str()) {
                return Ok(*pos);
            }
        }
        Ok(events
            .last()
            .map_or(fallback, |(p, _)| *p)
            .max(fallback.min(cap)))
    }

    pub(super) fn dm_rooms(&self, user: &UserId) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        if let Some(direct) = self.users.get_account_data(user, None, "m.direct")? {
            if let Some(map) = direct.as_object() {
                for rooms in map.values() {
                    for r in rooms.as_array().into_iter().flatten() {
                        if let Some(r) = r.as_str() {
                            out.insert(r.to_owned());
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    pub(super) fn is_dm(
        &self,
        dms: &HashSet<String>,
        room_id: &RoomId,
        user: &UserId,
        m: Membership,
    ) -> Result<bool> {
        if dms.contains(room_id.as_str()) {
            return Ok(true);
        }
        if m == Membership::Invite {
            let content = self
                .rooms
                .state_content(room_id, "m.room.member", user.as_str())?;
            return Ok(content.is_some_and(|c| c["is_direct"] == true));
        }
        Ok(false)
    }

    pub(super) fn passes_filters(
        &self,
        filters: &Value,
        c: &Candidate,
        dms: &HashSet<String>,
        user: &UserId,
    ) -> Result<bool> {
        if !filters.is_object() {
            return Ok(true);
        }
        if let Some(want) = filters["is_dm"].as_bool() {
            if self.is_dm(dms, &c.room_id, user, c.membership)? != want {
                return Ok(false);
            }
        }
        if let Some(want) = filters["is_encrypted"].as_bool() {
            let enc = self
                .rooms
                .state_event_str(&c.room_id, "m.room.encryption", "")?
                .is_some();
            if enc != want {
                return Ok(false);
            }
        }
        if let Some(want) = filters["is_invite"].as_bool() {
            if (c.membership == Membership::Invite) != want {
                return Ok(false);
            }
        }
        let room_type = self.rooms.room(&c.room_id).ok().and_then(|r| r.room_type);
        let type_matches = |list: &Value| -> Option<bool> {
            let arr = list.as_array()?;
            Some(arr.iter().any(|t| match t.as_str() {
                None => room_type.is_none(),
                Some(t) => room_type.as_deref() == Some(t),
            }))
        };
        if filters["room_types"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            && type_matches(&filters["room_types"]) == Some(false)
        {
            return Ok(false);
        }
        if type_matches(&filters["not_room_types"]) == Some(true) {
            return Ok(false);
        }
        Ok(true)
    }
}
