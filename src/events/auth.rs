//! The spec's authorization rules, applied to every event before it is stored
//! (ruma-state-res implements the rules per room version; we feed it our state).

use std::sync::Arc;

use ruma::{events::StateEventType, EventId, RoomVersionId};

use super::{rules_for, Pdu};
use crate::{Error, Result};

/// Checks `pdu` against the rules of `version`, given its auth events (`fetch_event`) and the
/// room's current state (`fetch_state`). A rejection is `M_FORBIDDEN` with the rule's reason.
pub fn check_auth(
    version: &RoomVersionId,
    pdu: &Pdu,
    fetch_event: impl Fn(&EventId) -> Option<Arc<Pdu>>,
    fetch_state: impl Fn(&StateEventType, &str) -> Option<Arc<Pdu>>,
) -> Result<()> {
    let rules = rules_for(version)?.authorization;
    ruma::state_res::check_state_independent_auth_rules(&rules, pdu, fetch_event)
        .map_err(Error::forbidden)?;
    ruma::state_res::check_state_dependent_auth_rules(&rules, pdu, fetch_state)
        .map_err(Error::forbidden)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ruma::{server_name, user_id, CanonicalJsonValue, OwnedEventId, UserId};
    use serde_json::{json, Value};

    use super::*;
    use crate::events::{builder, keys::ServerKeys};

    /// A tiny in-memory room: events by id and current state.
    struct Room {
        version: RoomVersionId,
        keys: ServerKeys,
        events: HashMap<OwnedEventId, Arc<Pdu>>,
        state: HashMap<(String, String), OwnedEventId>,
        last: Option<(OwnedEventId, u64)>,
    }

    impl Room {
        fn new(version: RoomVersionId) -> Room {
            Room {
                version,
                keys: ServerKeys::generate().unwrap(),
                events: HashMap::new(),
                state: HashMap::new(),
                last: None,
            }
        }

        fn build(
            &self,
            sender: &UserId,
            kind: &str,
            state_key: Option<&str>,
            content: Value,
        ) -> Pdu {
            let raw = serde_json::value::to_raw_value(&content).unwrap();
            let auth =
                builder::auth_events_for(kind, sender, state_key, &raw, &self.version, |k, s| {
                    self.state.get(&(k.to_string(), s.to_owned())).cloned()
                })
                .unwrap();
            let (prev, depth) = match &self.last {
                Some((id, d)) => (vec![id.clone()], d + 1),
                None => (vec![], 1),
            };
            let mut v = json!({
                "room_id": "!room:test", "sender": sender, "type": kind, "content": content,
                "origin_server_ts": 1, "prev_events": prev, "auth_events": auth, "depth": depth,
            });
            if let Some(k) = state_key {
                v["state_key"] = json!(k);
            }
            let CanonicalJsonValue::Object(o) = CanonicalJsonValue::try_from(v).unwrap() else {
                unreachable!()
            };
            let (id, o) =
                builder::finalize_event(&self.keys, server_name!("test"), &self.version, o)
                    .unwrap();
            Pdu::from_canonical(id, o).unwrap()
        }

        fn check(&self, pdu: &Pdu) -> Result<()> {
            check_auth(
                &self.version,
                pdu,
                |id| self.events.get(id).cloned(),
                |k, s| {
                    self.state
                        .get(&(k.to_string(), s.to_owned()))
                        .and_then(|id| self.events.get(id).cloned())
                },
            )
        }

        fn send(
            &mut self,
            sender: &UserId,
            kind: &str,
            state_key: Option<&str>,
            content: Value,
        ) -> Result<OwnedEventId> {
            let pdu = self.build(sender, kind, state_key, content);
            self.check(&pdu)?;
            let id = pdu.event_id.clone();
            if let Some(k) = state_key {
                self.state
                    .insert((kind.to_owned(), k.to_owned()), id.clone());
            }
            self.last = Some((id.clone(), pdu.depth));
            self.events.insert(id.clone(), Arc::new(pdu));
            Ok(id)
        }

        fn member(
            &mut self,
            sender: &UserId,
            target: &UserId,
            membership: &str,
        ) -> Result<OwnedEventId> {
            self.send(
                sender,
                "m.room.member",
                Some(target.as_str()),
                json!({ "membership": membership }),
            )
        }
    }

    fn private_room(version: RoomVersionId) -> Room {
        let alice = user_id!("@alice:test");
        let mut room = Room::new(version);
        room.send(
            alice,
            "m.room.create",
            Some(""),
            json!({ "creator": alice, "room_version": room.version.as_str() }),
        )
        .unwrap();
        room.member(alice, alice, "join").unwrap();
        room.send(
            alice,
            "m.room.power_levels",
            Some(""),
            json!({ "users": { alice: 100 }, "users_default": 0, "events_default": 0, "state_default": 50,
                    "ban": 50, "kick": 50, "invite": 0, "redact": 50,
                    "events": { "m.room.name": 50, "m.room.power_levels": 100 } }),
        )
        .unwrap();
        room.send(
            alice,
            "m.room.join_rules",
            Some(""),
            json!({ "join_rule": "invite" }),
        )
        .unwrap();
        room
    }

    #[test]
    fn invite_only_join_needs_invite() {
        for version in [RoomVersionId::V10, RoomVersionId::V11] {
            let mut room = private_room(version);
            let bob = user_id!("@bob:test");
            let err = room.member(bob, bob, "join").unwrap_err();
            assert_eq!(err.errcode(), "M_FORBIDDEN");
            room.member(user_id!("@alice:test"), bob, "invite").unwrap();
            room.member(bob, bob, "join").unwrap();
            room.send(bob, "m.room.message", None, json!({ "body": "hi" }))
                .unwrap();
        }
    }

    #[test]
    fn non_member_cannot_send_and_power_is_enforced() {
        let mut room = private_room(RoomVersionId::V11);
        let alice = user_id!("@alice:test");
        let bob = user_id!("@bob:test");
        assert!(room
            .send(bob, "m.room.message", None, json!({ "body": "x" }))
            .is_err());
        room.member(alice, bob, "invite").unwrap();
        room.member(bob, bob, "join").unwrap();
        let err = room
            .send(bob, "m.room.name", Some(""), json!({ "name": "mine" }))
            .unwrap_err();
        assert_eq!(err.errcode(), "M_FORBIDDEN");
        room.send(alice, "m.room.name", Some(""), json!({ "name": "ours" }))
            .unwrap();
        // Bob cannot kick Alice (no power) but Alice can kick Bob.
        assert!(room.member(bob, alice, "leave").is_err());
        room.member(alice, bob, "leave").unwrap();
        assert!(room
            .send(bob, "m.room.message", None, json!({ "body": "x" }))
            .is_err());
    }

    #[test]
    fn banned_user_cannot_join_until_unbanned() {
        let mut room = private_room(RoomVersionId::V11);
        let alice = user_id!("@alice:test");
        let bob = user_id!("@bob:test");
        room.send(
            alice,
            "m.room.join_rules",
            Some(""),
            json!({ "join_rule": "public" }),
        )
        .unwrap();
        room.member(bob, bob, "join").unwrap();
        room.member(alice, bob, "ban").unwrap();
        assert!(room.member(bob, bob, "join").is_err());
        assert!(
            room.member(alice, bob, "invite").is_err(),
            "a banned user cannot be invited"
        );
        room.member(alice, bob, "leave").unwrap();
        room.member(bob, bob, "join").unwrap();
    }

    #[test]
    fn knock_only_in_knock_rooms() {
        let mut room = private_room(RoomVersionId::V11);
        let alice = user_id!("@alice:test");
        let carol = user_id!("@carol:test");
        assert!(room.member(carol, carol, "knock").is_err());
        room.send(
            alice,
            "m.room.join_rules",
            Some(""),
            json!({ "join_rule": "knock" }),
        )
        .unwrap();
        room.member(carol, carol, "knock").unwrap();
        assert!(
            room.member(carol, carol, "join").is_err(),
            "knocking is not joining"
        );
        room.member(alice, carol, "invite").unwrap();
        room.member(carol, carol, "join").unwrap();
    }

    #[test]
    fn second_create_is_rejected() {
        let mut room = private_room(RoomVersionId::V11);
        let alice = user_id!("@alice:test");
        assert!(room
            .send(
                alice,
                "m.room.create",
                Some(""),
                json!({ "room_version": "11" })
            )
            .is_err());
    }
}
