//! MatrixRTC on the homeserver side: SFU discovery, OpenID tokens, the LiveKit token
//! service (lk-jwt-service compatible), delayed events (MSC4140), call-membership
//! counting and the client of the SFU's room-admin API.

pub mod calls;
pub mod delayed;
pub mod delegation;
pub mod embedded;
pub mod keys;
pub mod openid;
pub mod placement;
pub mod recording;
pub mod removal;
pub mod sfu_admin;
pub mod token;

use std::sync::Arc;

use ruma::{RoomId, ServerName, UserId};

pub use self::{
    calls::CallMember,
    delayed::{DelayedAction, DelayedEvent},
    keys::LiveKitKeys,
    openid::OpenIdGrant,
};
use crate::{
    config::Config,
    rooms::{Membership, RoomsService},
    storage::Storage,
    users::{now_ms, UsersService},
    Error, Result,
};

/// A LiveKit token and the SFU to use it with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SfuGrant {
    /// WebSocket URL of the SFU.
    pub url: String,
    /// The LiveKit access token.
    pub jwt: String,
}

/// The rtc service.
pub struct RtcService {
    config: Arc<Config>,
    storage: Arc<Storage>,
    rooms: Arc<RoomsService>,
    users: Arc<UsersService>,
    keys: LiveKitKeys,
    delayed: delayed::Scheduler,
    sfus: placement::SfuPool,
    delegations: delegation::Delegations,
}

impl RtcService {
    /// Builds the service; OpenID tokens that expired while the server was down are purged.
    pub fn new(
        config: Arc<Config>,
        storage: Arc<Storage>,
        rooms: Arc<RoomsService>,
        users: Arc<UsersService>,
        keys: LiveKitKeys,
    ) -> Result<RtcService> {
        let sfus = placement::SfuPool::new(&config.rtc, &internal_secret(&config, &keys))?;
        let service = RtcService {
            config,
            delegations: delegation::Delegations::new(storage.clone()),
            storage,
            rooms,
            users,
            keys,
            delayed: delayed::Scheduler::default(),
            sfus,
        };
        service.purge_expired_openid_tokens()?;
        Ok(service)
    }

    /// The LiveKit key pair (the SFU validates tokens with it).
    pub fn livekit_keys(&self) -> &LiveKitKeys {
        &self.keys
    }

    /// The WebSocket URL of the SFU hosting the `slot` of `room_id`'s call.
    pub fn sfu_url(&self, room_id: &RoomId, slot: &str) -> &str {
        &self
            .sfus
            .for_room(&token::livekit_room_name(room_id.as_str(), slot))
            .url
    }

    /// The `livekit_service_url` advertised to clients: where `/sfu/get` and `/get_token` live.
    pub fn service_url(&self) -> String {
        self.config.rtc_service_url()
    }

    /// The secret of the SFU's internal admin API (the embedded SFU is given it).
    pub fn sfu_internal_secret(&self) -> String {
        internal_secret(&self.config, &self.keys)
    }

    /// Where the server's own participants (the meeting recorder) reach the SFU hosting
    /// the `slot` of `room_id`'s call: its internal address.
    pub fn sfu_internal_url(&self, room_id: &RoomId, slot: &str) -> &str {
        &self
            .sfus
            .for_room(&token::livekit_room_name(room_id.as_str(), slot))
            .internal_ws
    }

    /// The client of the admin API of the SFU hosting the LiveKit room `room`.
    pub fn sfu_admin(&self, room: &str) -> &sfu_admin::SfuAdmin {
        &self.sfus.for_room(room).admin
    }

    /// Exchanges an OpenID token issued by `server_name` for a LiveKit token for the
    /// `slot` of `room_id`, as `device_id`. `claimed_user`, when given, must be the token's
    /// user. The user must be joined to the room.
    #[tracing::instrument(skip(self, openid_token), fields(room = %room_id))]
    pub fn sfu_token_for_openid(
        &self,
        openid_token: &str,
        server_name: &str,
        room_id: &RoomId,
        slot: &str,
        device_id: Option<&str>,
        claimed_user: Option<&str>,
    ) -> Result<SfuGrant> {
        if ServerName::parse(server_name)
            .map_err(|_| Error::bad_json("openid_token.matrix_server_name is not a server name"))?
            != self.rooms.server_name()
        {
            return Err(Error::forbidden(format!(
                "This token service only serves users of {}",
                self.rooms.server_name()
            )));
        }
        let grant = self.openid_grant(openid_token)?;
        if claimed_user.is_some_and(|c| c != grant.user_id.as_str()) {
            return Err(Error::matrix(
                crate::ErrorKind::Unauthenticated,
                "M_UNAUTHORIZED",
                "member.claimed_user_id does not match the OpenID token",
            ));
        }
        let device = match device_id {
            Some(d) if !d.is_empty() => d.to_owned(),
            _ => grant.device_id.to_string(),
        };
        self.sfu_token(&grant.user_id, &device, room_id, slot)
    }

    /// A LiveKit token for `user` on `device` in the `slot` of `room_id`; 403 `M_FORBIDDEN`
    /// unless the user is joined to the room.
    pub fn sfu_token(
        &self,
        user: &UserId,
        device: &str,
        room_id: &RoomId,
        slot: &str,
    ) -> Result<SfuGrant> {
        if slot.is_empty() {
            return Err(Error::bad_json("slot_id must not be empty"));
        }
        if device.is_empty() || device.len() > 255 {
            return Err(Error::bad_json("device id must be 1 to 255 characters"));
        }
        if self.rooms.membership(room_id, user)? != Some(Membership::Join) {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        if self.users.is_deactivated(user)? {
            return Err(Error::user_deactivated());
        }
        let room = token::livekit_room_name(room_id.as_str(), slot);
        let url = self.sfus.for_room(&room).url.clone();
        let claims = token::participant_claims(
            &self.keys,
            token::identity(user.as_str(), device),
            room,
            now_ms() / 1000,
            self.config.rtc.token_ttl_secs,
        );
        Ok(SfuGrant {
            url,
            jwt: token::encode(&claims, &self.keys)?,
        })
    }
}

/// The configured internal-API secret, or the one derived from the LiveKit API secret.
fn internal_secret(config: &Config, keys: &LiveKitKeys) -> String {
    if config.rtc.sfu_internal_secret.is_empty() {
        sfu_admin::derived_internal_secret(keys)
    } else {
        config.rtc.sfu_internal_secret.clone()
    }
}

/// Power level of a moderator (Myelin's virtual rooms), needed for "mute for all".
pub const MODERATOR_LEVEL: i64 = 50;

impl RtcService {
    /// "Mute for all": the SFU mutes the published audio of everyone in the room's call
    /// except `moderator`'s own devices. Needs a joined moderator (power ≥ 50); returns
    /// the identities (`"{userId}:{deviceId}"`) whose audio was muted.
    #[tracing::instrument(skip(self), fields(room = %room_id, moderator = %moderator))]
    pub async fn mute_call_for_all(
        &self,
        room_id: &RoomId,
        moderator: &UserId,
    ) -> Result<Vec<String>> {
        if self.rooms.membership(room_id, moderator)? != Some(Membership::Join) {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        if self.rooms.power_levels(room_id)?.user_level(moderator) < MODERATOR_LEVEL {
            return Err(Error::forbidden("Only moderators may mute everyone"));
        }
        let keep: Vec<String> = self
            .call_members(room_id)?
            .into_iter()
            .filter(|m| m.user_id == moderator)
            .map(|m| token::identity(m.user_id.as_str(), &m.device_id))
            .collect();
        let room = token::livekit_room_name(room_id.as_str(), token::ROOM_CALL_SLOT);
        self.sfu_admin(&room)
            .mute_all_audio_except(&room, &keep)
            .await
    }
}

impl RtcService {
    /// Ends the room's call for a deleted room: the SFU closes its LiveKit room and
    /// disconnects everyone in it. Returns the identities disconnected.
    #[tracing::instrument(skip(self), fields(room = %room_id))]
    pub async fn end_call(&self, room_id: &RoomId) -> Result<Vec<String>> {
        let room = token::livekit_room_name(room_id.as_str(), token::ROOM_CALL_SLOT);
        self.sfu_admin(&room).close_room(&room).await
    }
}

impl RtcService {
    /// `user` left the room (or was kicked or banned): the SFU disconnects them from the
    /// room's call and refuses the tokens they were given before. Returns the identities
    /// disconnected.
    #[tracing::instrument(skip(self), fields(room = %room_id, user = %user))]
    pub async fn remove_from_call(&self, room_id: &RoomId, user: &UserId) -> Result<Vec<String>> {
        let room = token::livekit_room_name(room_id.as_str(), token::ROOM_CALL_SLOT);
        self.sfu_admin(&room)
            .remove_user(&room, user.as_str())
            .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::services::Services;

    pub(crate) fn services() -> Arc<Services> {
        Services::in_memory(Config::default()).expect("services")
    }

    #[tokio::test]
    async fn sfu_token_needs_a_joined_local_user() {
        let s = services();
        let alice = UserId::parse("@alice:localhost").unwrap();
        let bob = UserId::parse("@bob:localhost").unwrap();
        let room = s
            .rooms
            .create_room(&alice, Default::default())
            .await
            .unwrap();
        let (token, _) = s
            .rtc
            .issue_openid_token(&alice, "ADEV".into())
            .await
            .unwrap();
        let grant = s
            .rtc
            .sfu_token_for_openid(
                &token,
                "localhost",
                &room,
                token::ROOM_CALL_SLOT,
                None,
                None,
            )
            .unwrap();
        assert_eq!(grant.url, "ws://127.0.0.1:7880");
        let claims = token::verify(&grant.jwt, s.rtc.livekit_keys()).unwrap();
        assert_eq!(claims.sub, "@alice:localhost:ADEV");
        assert_eq!(
            claims.video.room,
            token::livekit_room_name(room.as_str(), token::ROOM_CALL_SLOT)
        );

        let err = |r: Result<SfuGrant>| r.unwrap_err().errcode();
        assert_eq!(
            err(s.rtc.sfu_token_for_openid(
                &token,
                "other.example",
                &room,
                "m.call#ROOM",
                None,
                None
            )),
            "M_FORBIDDEN"
        );
        assert_eq!(
            err(s
                .rtc
                .sfu_token_for_openid("bad", "localhost", &room, "m.call#ROOM", None, None)),
            "M_UNKNOWN_TOKEN"
        );
        assert_eq!(
            err(s.rtc.sfu_token_for_openid(
                &token,
                "localhost",
                &room,
                "m.call#ROOM",
                Some("D"),
                Some("@mallory:localhost")
            )),
            "M_UNAUTHORIZED"
        );
        let (bob_token, _) = s.rtc.issue_openid_token(&bob, "BDEV".into()).await.unwrap();
        assert_eq!(
            s.rtc
                .mute_call_for_all(&room, &bob)
                .await
                .unwrap_err()
                .errcode(),
            "M_FORBIDDEN"
        );
        assert_eq!(
            err(s.rtc.sfu_token_for_openid(
                &bob_token,
                "localhost",
                &room,
                "m.call#ROOM",
                None,
                None
            )),
            "M_FORBIDDEN"
        );
    }
}
