//! The meetings list of a user: over the rooms where they are a member or invitee, the
//! **ongoing** meetings (a live call: unexpired call memberships) and the **scheduled**
//! ones (the next occurrence of the room's schedule that has not ended, RRULE
//! expanded), each sorted by start.

use ruma::{RoomId, UserId};
use serde::Serialize;

use super::{MeetingsService, Schedule, SCHEDULE_EVENT};
use crate::{
    rooms::{Membership, MODERATOR_LEVEL},
    users::now_ms,
    Result,
};

/// One meeting of the list.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MeetingItem {
    /// The room.
    pub room_id: ruma::OwnedRoomId,
    /// The room's name, if any.
    pub name: Option<String>,
    /// The room's join link, if it has one.
    pub join_url: Option<String>,
    /// Start of the occurrence, ms since the epoch (scheduled meetings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_ts: Option<u64>,
    /// End of the occurrence, ms since the epoch (scheduled meetings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_ts: Option<u64>,
    /// The schedule's title, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Live call memberships (devices in the call).
    pub participants: usize,
    /// Whether the caller owns the room.
    pub is_owner: bool,
    /// Whether the caller is a moderator (power ≥ 50).
    pub is_moderator: bool,
}

/// `{"ongoing": [...], "scheduled": [...]}`.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct MeetingsList {
    /// Rooms with a live call.
    pub ongoing: Vec<MeetingItem>,
    /// Rooms whose schedule has an occurrence that has not ended.
    pub scheduled: Vec<MeetingItem>,
}

impl MeetingsService {
    /// The meetings involving `user`.
    pub fn meetings(&self, user: &UserId) -> Result<MeetingsList> {
        let now = now_ms();
        let mut list = MeetingsList::default();
        for &(ref room_id, membership, _) in self.rooms.user_rooms(user)?.iter() {
            if !matches!(membership, Membership::Join | Membership::Invite) {
                continue;
            }
            let participants = self.rtc.call_members(room_id)?.len();
            let occurrence = self
                .rooms
                .state_content(room_id, SCHEDULE_EVENT, "")?
                .and_then(|c| Schedule::parse(&c).ok().flatten())
                .and_then(|s| s.next_occurrence(now).map(|o| (s.title, o)));
            if participants == 0 && occurrence.is_none() {
                continue;
            }
            let item = self.item(room_id, user, participants, occurrence.clone())?;
            let started = occurrence
                .as_ref()
                .is_some_and(|(_, (start, _))| *start <= now);
            if participants > 0 {
                list.ongoing.push(item.clone());
            }
            // A future occurrence is listed; one under way is the ongoing meeting when
            // its call is live, else still upcoming.
            if occurrence.is_some() && !(participants > 0 && started) {
                list.scheduled.push(item);
            }
        }
        let key = |i: &MeetingItem| (i.start_ts.unwrap_or(0), i.room_id.clone());
        list.ongoing.sort_by_key(key);
        list.scheduled.sort_by_key(key);
        Ok(list)
    }

    fn item(
        &self,
        room_id: &RoomId,
        user: &UserId,
        participants: usize,
        occurrence: Option<(String, (u64, u64))>,
    ) -> Result<MeetingItem> {
        let name = self
            .rooms
            .state_content(room_id, "m.room.name", "")?
            .and_then(|c| c["name"].as_str().map(str::to_owned));
        let level = self.rooms.power_levels(room_id)?.user_level(user);
        let (title, times) = match occurrence {
            Some((title, (start, end))) => (Some(title), Some((start, end))),
            None => (None, None),
        };
        Ok(MeetingItem {
            room_id: room_id.to_owned(),
            name,
            join_url: self.room_link_url(room_id)?,
            start_ts: times.map(|t| t.0),
            end_ts: times.map(|t| t.1),
            title,
            participants,
            is_owner: self.rooms.room_owner(room_id)?.as_deref() == Some(user),
            is_moderator: level >= MODERATOR_LEVEL,
        })
    }
}
