//! Meetings (DESIGN.md §1): join links to a room's meeting, temporary participants
//! (local users and external guests who join by link without becoming members), the
//! meetings list, scheduled meetings with their iCalendar export, and personal meeting
//! rooms.
//!
//! - [`links`]: creating, reading and revoking a room's join link; the lobby a link
//!   shows; joining by link as a temporary participant;
//! - [`temporary`]: watching temporary participants and removing them when they leave
//!   the call or stay idle; retiring guest accounts with no room left;
//! - [`schedule`]: the `io.myelin.meeting.schedule` state event, its room policy and the
//!   next occurrence of a schedule (RRULE expanded);
//! - [`list`]: the ongoing and scheduled meetings of a user; [`ics`]: the `.ics` export;
//! - [`personal`]: each user's personal meeting room.

mod consumer;
mod ics;
mod links;
mod list;
mod personal;
pub mod schedule;
mod store;
mod temporary;

use std::sync::Arc;

use ruma::{RoomId, UserId};

pub use self::{
    consumer::MeetingsConsumer,
    links::JoinLink,
    list::{MeetingItem, MeetingsList},
    personal::MEETING_LINK_FIELD,
    schedule::{Schedule, SchedulePolicy, SCHEDULE_EVENT},
    store::{LinkRecord, MeetingsStore, TemporaryRecord},
};
use crate::{
    config::Config,
    rooms::{Membership, RoomsService, MODERATOR_LEVEL},
    rtc::RtcService,
    storage::Storage,
    users::UsersService,
    Error, Result,
};

/// The member-event content key marking a temporary participant.
pub const TEMPORARY_KEY: &str = "io.myelin.temporary";

/// The meetings service.
pub struct MeetingsService {
    config: Arc<Config>,
    store: MeetingsStore,
    rooms: Arc<RoomsService>,
    users: Arc<UsersService>,
    rtc: Arc<RtcService>,
    /// Serialises the creation of personal rooms, so one user gets one.
    personal_lock: tokio::sync::Mutex<()>,
}

impl MeetingsService {
    /// Builds the service.
    pub fn new(
        config: Arc<Config>,
        storage: Arc<Storage>,
        rooms: Arc<RoomsService>,
        users: Arc<UsersService>,
        rtc: Arc<RtcService>,
    ) -> MeetingsService {
        MeetingsService {
            config,
            store: MeetingsStore::new(storage),
            rooms,
            users,
            rtc,
            personal_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether `user` is a temporary participant of `room_id`.
    pub fn is_temporary(&self, room_id: &RoomId, user: &UserId) -> Result<bool> {
        self.store.is_temporary(room_id, user)
    }

    /// 404 for an unknown room, 403 unless `user` is a joined moderator (power ≥ 50).
    fn check_moderator(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        self.rooms.room(room_id)?;
        if self.rooms.membership(room_id, user)? != Some(Membership::Join) {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        if self.rooms.power_levels(room_id)?.user_level(user) < MODERATOR_LEVEL {
            return Err(Error::forbidden(
                "Only moderators may manage this room's meetings",
            ));
        }
        Ok(())
    }

    /// 404 for an unknown room, 403 unless `user` is joined or invited.
    fn check_involved(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        self.rooms.room(room_id)?;
        match self.rooms.membership(room_id, user)? {
            Some(Membership::Join | Membership::Invite) => Ok(()),
            _ => Err(Error::forbidden("You are not a member of this room")),
        }
    }
}
