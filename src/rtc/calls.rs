//! Who is in a room's call: the MatrixRTC membership state (`org.matrix.msc3401.call.member`
//! and `m.rtc.member`) with expiry honoured: an expired membership counts as left.

use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::Value;

use super::RtcService;
use crate::{users::now_ms, Result};

/// The legacy (Element Call) call membership event type.
pub const CALL_MEMBER_EVENT: &str = "org.matrix.msc3401.call.member";
/// The MatrixRTC membership event type.
pub const RTC_MEMBER_EVENT: &str = "m.rtc.member";

/// Lifetime of a membership that does not say (Element Call's default, 4 h).
pub const DEFAULT_EXPIRES_MS: u64 = 4 * 60 * 60 * 1000;

/// One active participant of a room's call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallMember {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device in the call (empty when the event does not say).
    pub device_id: String,
    /// The state key of the membership event.
    pub state_key: String,
    /// When the membership expires, milliseconds since the epoch.
    pub expires_at_ms: u64,
}

/// When one membership object expires: `expires_ts` (absolute) or `expires` (ms) from
/// `created_ts`, else from the event's `origin_server_ts`; 4 h when neither is given.
fn expiry_of(member: &Value, origin_server_ts: u64) -> u64 {
    if let Some(ts) = member.get("expires_ts").and_then(Value::as_u64) {
        return ts;
    }
    let start = member
        .get("created_ts")
        .and_then(Value::as_u64)
        .unwrap_or(origin_server_ts);
    let ttl = member
        .get("expires")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_EXPIRES_MS);
    start.saturating_add(ttl)
}

/// The live memberships in one membership event's content at `now`. Empty content (`{}`)
/// means the member left. The oldest format lists memberships in a `memberships` array.
pub fn active_memberships(
    sender: &UserId,
    state_key: &str,
    content: &Value,
    origin_server_ts: u64,
    now: u64,
) -> Vec<CallMember> {
    let Some(object) = content.as_object() else {
        return Vec::new();
    };
    let entries: Vec<&Value> = match object.get("memberships") {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(_) => Vec::new(),
        None if object.is_empty() => Vec::new(),
        None => vec![content],
    };
    entries
        .into_iter()
        .filter_map(|m| {
            let expires_at_ms = expiry_of(m, origin_server_ts);
            (expires_at_ms > now).then(|| CallMember {
                user_id: sender.to_owned(),
                device_id: m
                    .get("device_id")
                    .or_else(|| m.pointer("/member/claimed_device_id"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                state_key: state_key.to_owned(),
                expires_at_ms,
            })
        })
        .collect()
}

impl RtcService {
    /// The room's call participants whose membership has not expired; members who left the
    /// room are not counted either.
    pub fn call_members(&self, room_id: &RoomId) -> Result<Vec<CallMember>> {
        let now = now_ms();
        let joined = self.rooms.members(room_id)?;
        let mut out = Vec::new();
        let mut events = self
            .rooms
            .state_events_of_type(room_id, CALL_MEMBER_EVENT)?;
        events.extend(self.rooms.state_events_of_type(room_id, RTC_MEMBER_EVENT)?);
        for pdu in events {
            if joined.get(&pdu.sender) != Some(crate::rooms::Membership::Join) {
                continue;
            }
            let content: Value = serde_json::from_str(pdu.content.get())?;
            out.extend(active_memberships(
                &pdu.sender,
                pdu.state_key.as_deref().unwrap_or_default(),
                &content,
                u64::from(pdu.origin_server_ts.get()),
                now,
            ));
        }
        Ok(out)
    }

    /// Whether the room has an ongoing call (at least one live membership).
    pub fn has_active_call(&self, room_id: &RoomId) -> Result<bool> {
        Ok(!self.call_members(room_id)?.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::rooms::NewEvent;

    fn alice() -> OwnedUserId {
        UserId::parse("@alice:localhost").unwrap()
    }

    #[test]
    fn expiry_rules() {
        let now = 100_000_000;
        let live = json!({"application": "m.call", "device_id": "D", "expires": 1000, "created_ts": now - 10});
        assert_eq!(active_memberships(&alice(), "k", &live, 0, now).len(), 1);
        let expired = json!({"application": "m.call", "device_id": "D", "expires": 1000, "created_ts": now - 2000});
        assert!(active_memberships(&alice(), "k", &expired, 0, now).is_empty());
        // Measured from origin_server_ts without created_ts; 4 h default.
        let bare = json!({"application": "m.call", "device_id": "D"});
        assert_eq!(
            active_memberships(&alice(), "k", &bare, now - 1000, now).len(),
            1
        );
        assert!(
            active_memberships(&alice(), "k", &bare, now - DEFAULT_EXPIRES_MS - 1, now).is_empty()
        );
        assert!(active_memberships(&alice(), "k", &json!({}), now, now).is_empty());
        let legacy = json!({"memberships": [
            {"device_id": "A", "expires": 5000, "created_ts": now - 1},
            {"device_id": "B", "expires": 5000, "created_ts": now - 6000},
        ]});
        let got = active_memberships(&alice(), "", &legacy, now, now);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].device_id, "A");
        let rtc = json!({"member": {"claimed_device_id": "C"}, "expires_ts": now + 5});
        assert_eq!(
            active_memberships(&alice(), "", &rtc, 0, now)[0].device_id,
            "C"
        );
    }

    #[tokio::test]
    async fn members_send_call_state_and_expired_ones_do_not_count() {
        let s = crate::rtc::tests::services();
        let room = s
            .rooms
            .create_room(&alice(), Default::default())
            .await
            .unwrap();
        let bob = UserId::parse("@bob:localhost").unwrap();
        s.rooms
            .invite(&room, &alice(), &bob, None, false, None)
            .await
            .unwrap();
        s.rooms
            .join(&room, &bob, &Default::default(), None)
            .await
            .unwrap();
        let guard = s.rooms.lock(&room).await;
        // Bob has power 0 and may still send his call membership.
        s.rooms
            .send(
                guard,
                &bob,
                NewEvent::state(
                    CALL_MEMBER_EVENT,
                    "_@bob:localhost_BDEV_m.call",
                    json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": "BDEV", "expires": 3_600_000}),
                ),
            )
            .await
            .unwrap();
        let guard = s.rooms.lock(&room).await;
        s.rooms
            .send(
                guard,
                &alice(),
                NewEvent::state(
                    CALL_MEMBER_EVENT,
                    "_@alice:localhost_ADEV_m.call",
                    json!({"application": "m.call", "device_id": "ADEV", "expires": 1, "created_ts": 1}),
                ),
            )
            .await
            .unwrap();
        let members = s.rtc.call_members(&room).unwrap();
        assert_eq!(members.len(), 1, "{members:?}");
        assert_eq!(members[0].user_id, bob);
        assert!(s.rtc.has_active_call(&room).unwrap());
        s.rooms.leave(&room, &bob, None).await.unwrap();
        assert!(!s.rtc.has_active_call(&room).unwrap());
    }
}
