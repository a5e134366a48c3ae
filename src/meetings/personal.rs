//! Personal meeting rooms: each user's own virtual room, created on first request and
//! the same one afterwards, with a join link. Its URL is published in the user's profile
//! as the custom field [`MEETING_LINK_FIELD`] (extended profiles), so a contact's link
//! can be copied.

use ruma::{OwnedRoomId, UserId};
use serde_json::{json, Map};

use super::{JoinLink, MeetingsService};
use crate::{
    rooms::{CreateRoom, Membership, VIRTUAL_ROOM_TYPE},
    Result,
};

/// The profile field holding a user's personal meeting link.
pub const MEETING_LINK_FIELD: &str = "io.myelin.meeting_link";

impl MeetingsService {
    /// The join link URL of `user`'s personal meeting room, if they have one.
    pub fn personal_link(&self, user: &UserId) -> Result<Option<String>> {
        match self.store.personal_room(user)? {
            Some(room_id) if self.rooms.exists(&room_id)? => self.room_link_url(&room_id),
            _ => Ok(None),
        }
    }

    /// `POST …/personal_room`: the caller's personal meeting room and its link.
    pub async fn personal_room(&self, user: &UserId) -> Result<(OwnedRoomId, JoinLink)> {
        let _serial = self.personal_lock.lock().await;
        if let Some(room_id) = self.store.personal_room(user)? {
            if self.rooms.exists(&room_id)?
                && self.rooms.membership(&room_id, user)? == Some(Membership::Join)
            {
                let link = self.ensure_link(&room_id, user)?;
                self.store.durable().await?;
                return Ok((room_id, link));
            }
        }
        let (displayname, avatar) = self.users.profile(user)?;
        let name = format!(
            "{}'s meeting room",
            displayname.as_deref().unwrap_or(user.localpart())
        );
        let mut creation = Map::new();
        creation.insert("type".into(), json!(VIRTUAL_ROOM_TYPE));
        let room_id = self
            .rooms
            .create_room(
                user,
                CreateRoom {
                    preset: Some("private_chat".into()),
                    name: Some(name),
                    creation_content: Some(creation),
                    creator_profile: (displayname, avatar),
                    ..Default::default()
                },
            )
            .await?;
        self.store.set_personal_room(user, &room_id)?;
        let link = self.ensure_link(&room_id, user)?;
        self.store.durable().await?;
        Ok((room_id, link))
    }
}
