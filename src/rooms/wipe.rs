//! Wipe history, for one user only: every event of a room up to the wipe disappears from
//! that user's reads (timelines, `/event`, `/context`, `/relations`, notifications and
//! unread counts); the room's state still applies and other members are unaffected.
//! Applied inside [`RoomsService::visible_timeline`] and
//! [`RoomsService::can_see_event`], which every read path goes through.

use ruma::{RoomId, UserId};

use super::{members::Membership, RoomsService};
use crate::{
    storage::{keys, Batch},
    Error, Result,
};

fn wipe_key(user: &UserId, room_id: &RoomId) -> Vec<u8> {
    keys::strs(&[user.as_str(), room_id.as_str()])
}

impl RoomsService {
    /// Hides every event of the room up to now from `user` (a joined member). Returns the
    /// last hidden position. Durable on return.
    pub async fn wipe_history(&self, room_id: &RoomId, user: &UserId) -> Result<u64> {
        if !self.exists(room_id)? {
            return Err(Error::not_found("No known room with that id"));
        }
        if self.membership(room_id, user)? != Some(Membership::Join) {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        let upto = self.current_pos().max(self.wiped_until(room_id, user)?);
        let mut batch = Batch::new();
        batch.insert(
            &self.storage.trees.history_wipes,
            &wipe_key(user, room_id),
            &upto.to_be_bytes(),
        );
        self.storage.commit_durable(batch).await?;
        // Counts and timelines changed for this user only.
        self.notifier.notify_user(user);
        Ok(upto)
    }

    /// The last timeline position `user` wiped in the room (0: never wiped).
    pub fn wiped_until(&self, room_id: &RoomId, user: &UserId) -> Result<u64> {
        Ok(self
            .storage
            .trees
            .history_wipes
            .get(&wipe_key(user, room_id))?
            .and_then(|v| keys::leading_u64(&v))
            .unwrap_or(0))
    }
}
