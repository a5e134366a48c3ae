//! Temporary participants: watched from the moment they join by link until the server
//! removes them — when they leave the call (their call membership is withdrawn or
//! expires), or after `meetings.temporary_idle_secs` in the room without a call
//! membership. A guest left with no room is deactivated, so its tokens stop working.
//!
//! Expiry and idleness are not events, so a sweeper task checks every watched
//! participant at an interval derived from the idle time (a quarter of it, between
//! 100 ms and 5 s); the records live in storage, so a restart resumes the watch.

use std::{sync::Arc, time::Duration};

use ruma::{RoomId, UserId};
use serde_json::json;

use super::{MeetingsService, TemporaryRecord};
use crate::{
    rooms::{Membership, NewEvent},
    users::now_ms,
    Result,
};

/// The reason on the leave of a participant who left the call.
const LEFT_CALL: &str = "Left the meeting";
/// The reason on the leave of a participant who never joined (or rejoined) the call.
const IDLE: &str = "Not in the meeting's call";
/// How long after its record a participant not (yet) in the room is taken to be joining.
const JOINING_MS: u64 = 30_000;

impl MeetingsService {
    /// How often the sweeper looks at temporary participants.
    fn sweep_interval(&self) -> Duration {
        let quarter = self.config.meetings.temporary_idle_secs.saturating_mul(250);
        Duration::from_millis(quarter.clamp(100, 5_000))
    }

    /// Starts the sweeper; call once inside the runtime.
    pub fn start_sweeper(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        let interval = self.sweep_interval();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(meetings) = this.upgrade() else {
                    return;
                };
                if let Err(e) = meetings.sweep().await {
                    tracing::error!(error = %e, "temporary participant sweep failed");
                }
            }
        });
    }

    /// Checks every temporary participant once: forgets those who left, records those
    /// seen in the call, removes those who left the call or stayed idle too long.
    pub async fn sweep(&self) -> Result<()> {
        for (room_id, user, record) in self.store.all_temporary()? {
            if let Err(e) = self.check_participant(&room_id, &user, record, false).await {
                tracing::warn!(room = %room_id, user = %user, error = %e, "could not check a temporary participant");
            }
        }
        Ok(())
    }

    /// A call membership of `user` in `room_id` changed (the `meetings` consumer): a
    /// temporary participant who withdrew it is removed at once.
    pub async fn call_membership_changed(
        &self,
        room_id: &RoomId,
        user: &UserId,
        withdrawn: bool,
    ) -> Result<()> {
        match self.store.temporary(room_id, user)? {
            Some(record) => {
                self.check_participant(room_id, user, record, withdrawn)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Applies the rules to one participant; `withdrew` when a withdrawal of their call
    /// membership was just seen.
    async fn check_participant(
        &self,
        room_id: &RoomId,
        user: &UserId,
        mut record: TemporaryRecord,
        withdrew: bool,
    ) -> Result<()> {
        let now = now_ms();
        if !matches!(
            self.rooms.membership(room_id, user)?,
            Some(Membership::Join | Membership::Invite)
        ) {
            // A record is written just before its join: a participant not yet joined may
            // be joining still, so a young record is looked at again at a later sweep.
            if !record.in_call && now.saturating_sub(record.since_ms) < JOINING_MS {
                return Ok(());
            }
            // Left, kicked or banned: nothing to remove any more.
            self.store.remove_temporary(room_id, user)?;
            return self.retire_guest(user, record.guest).await;
        }
        let in_call = self
            .rtc
            .call_members(room_id)?
            .iter()
            .any(|m| m.user_id == user);
        let idle_ms = self
            .config
            .meetings
            .temporary_idle_secs
            .saturating_mul(1000);
        let reason = if in_call {
            if !record.in_call {
                record.in_call = true;
                record.since_ms = now;
                self.store.put_temporary(room_id, user, &record)?;
            }
            return Ok(());
        } else if record.in_call || withdrew {
            LEFT_CALL
        } else if now.saturating_sub(record.since_ms) >= idle_ms {
            IDLE
        } else {
            return Ok(());
        };
        self.remove_participant(room_id, user, reason).await?;
        self.store.remove_temporary(room_id, user)?;
        self.retire_guest(user, record.guest).await
    }

    /// The server writes the participant's leave (on their behalf, like a deactivated
    /// account's) with `reason`.
    #[tracing::instrument(skip(self), fields(room = %room_id, user = %user))]
    async fn remove_participant(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: &str,
    ) -> Result<()> {
        let guard = self.rooms.lock(room_id).await;
        if !matches!(
            self.rooms.membership(room_id, user)?,
            Some(Membership::Join | Membership::Invite)
        ) {
            return Ok(());
        }
        self.rooms
            .send(
                guard,
                user,
                NewEvent::state(
                    "m.room.member",
                    user.as_str(),
                    json!({ "membership": "leave", "reason": reason }),
                ),
            )
            .await?;
        tracing::info!(reason, "temporary participant removed");
        Ok(())
    }

    /// Deactivates a guest who joined by link once no room is left to them.
    async fn retire_guest(&self, user: &UserId, guest: bool) -> Result<()> {
        if !guest || self.users.is_deactivated(user)? {
            return Ok(());
        }
        let in_some_room = self.rooms.user_rooms(user)?.iter().any(|(_, m, _)| {
            matches!(m, Membership::Join | Membership::Invite | Membership::Knock)
        });
        if in_some_room || !self.store.temporary_rooms_of(user)?.is_empty() {
            return Ok(());
        }
        self.users.deactivate(user)?;
        self.store.durable().await?;
        tracing::info!(user = %user, "guest deactivated: no meeting left");
        Ok(())
    }
}
