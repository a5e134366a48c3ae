//! One room of a sliding sync response: invite/knock state, or timeline, required state,
//! counts and display fields of a joined (or readable) room.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
};

use ruma::{RoomId, UserId};
use serde_json::{json, Map, Value};

use super::{lists::Candidate, RoomConfig, SentRoom};
use crate::{
    events::Pdu,
    rooms::{Direction, Membership},
    sync::{SyncService, SyncToken},
    Result,
};

impl SyncService {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sliding_room(
        &self,
        user: &UserId,
        room_id: &RoomId,
        candidate: Option<&Candidate>,
        config: &RoomConfig,
        sent: Option<&SentRoom>,
        since: Option<SyncToken>,
        now: SyncToken,
        dms: &HashSet<String>,
        counts: &mut (u64, u64),
    ) -> Result<Option<Value>> {
        let membership = candidate.map(|c| c.membership);
        let initial = sent.is_none_or(|s| s.config != config.hash());
        let mut entry = Map::new();

        if matches!(membership, Some(Membership::Invite | Membership::Knock)) {
            let c = candidate.expect("membership implies a candidate");
            if !initial && sent.is_some_and(|s| s.timeline >= c.membership_pos) {
                return Ok(None);
            }
            let stripped = self.stripped_state(room_id, user)?;
            let field = if c.membership == Membership::Invite {
                "invite_state"
            } else {
                "knock_state"
            };
            entry.insert(field.into(), json!(stripped));
            entry.insert("initial".into(), json!(true));
            entry.insert("bump_stamp".into(), json!(c.bump));
            if c.membership == Membership::Invite && self.is_dm(dms, room_id, user, c.membership)? {
                entry.insert("is_dm".into(), json!(true));
            }
            if let Some(name) = stripped
                .iter()
                .find(|e| e["type"] == "m.room.name")
                .and_then(|e| e["content"]["name"].as_str())
            {
                entry.insert("name".into(), json!(name));
            }
            return Ok(Some(Value::Object(entry)));
        }

        // Joined (or left since the previous position, or a readable subscription).
        // How far the user may read: everything while joined (or when the room is world
        // readable), else up to their leave; state and timeline both stop there.
        let until = match candidate {
            Some(c) if c.membership != Membership::Join => c.membership_pos,
            _ => self.rooms.visible_until(room_id, user)?,
        };
        let live = until == u64::MAX;
        let cap = until.min(now.timeline);
        let from = if initial {
            0
        } else {
            sent.map_or(0, |s| s.timeline)
        };
        let limit = config.timeline_limit;
        let (mut events, limited) = if limit == 0 {
            (Vec::new(), from < cap && !initial)
        } else {
            self.rooms.visible_timeline(
                room_id,
                user,
                from,
                cap,
                Direction::Backward,
                limit,
                None,
            )?
        };
        events.reverse();
        if live {
            self.note_delivered(room_id, user, &events)?;
        }

        // Required state: all matching visible state when initial; otherwise the matching
        // state that changed since the room was last sent.
        let state_now = if live {
            self.rooms.current_state(room_id)?
        } else {
            self.rooms.state_at(room_id, until)?
        };
        let mut required: Vec<Arc<Pdu>> = Vec::new();
        let lazy_senders: BTreeSet<String> = if config.wants_lazy_members() {
            events.iter().map(|(_, p)| p.sender.to_string()).collect()
        } else {
            BTreeSet::new()
        };
        let before = if initial {
            None
        } else {
            Some(self.rooms.state_at(room_id, from.min(until))?)
        };
        for ((kind, key), event_id) in &state_now {
            let wanted = config.wants(kind, key, user)
                || (kind == "m.room.member" && lazy_senders.contains(key.as_str()));
            if !wanted {
                continue;
            }
            let changed = before
                .as_ref()
                .is_none_or(|b| b.get(&(kind.clone(), key.clone())) != Some(event_id));
            // Lazy members are resent with timelines that mention them in the first
            // response, and when their member event changed.
            if changed || (initial && lazy_senders.contains(key.as_str())) {
                if let Some(pdu) = self.rooms.get_pdu(event_id)? {
                    required.push(pdu);
                }
            }
        }

        let (notification_count, highlight_count) = self.push.unread_counts(user, room_id)?;
        *counts = (notification_count, highlight_count);
        if !initial
            && events.is_empty()
            && required.is_empty()
            && sent.is_some_and(|s| s.counts == *counts)
        {
            return Ok(None);
        }
        let members = if live {
            self.rooms.members(room_id)?
        } else {
            Arc::new(self.rooms.members_in(&state_now)?)
        };
        let first_pos = events.first().map(|(p, _)| *p);
        let prev_batch = crate::rooms::Token(first_pos.map_or(cap, |p| p - 1));
        let num_live = if initial {
            0
        } else {
            events
                .iter()
                .filter(|(p, _)| since.is_some_and(|s| *p > s.timeline))
                .count()
        };
        entry.insert("initial".into(), json!(initial));
        entry.insert(
            "timeline".into(),
            json!(events
                .iter()
                .map(|(_, p)| p.to_sync_event())
                .collect::<Vec<_>>()),
        );
        entry.insert(
            "required_state".into(),
            json!(required
                .iter()
                .map(|p| p.to_sync_event())
                .collect::<Vec<_>>()),
        );
        entry.insert("prev_batch".into(), json!(prev_batch.to_string()));
        entry.insert("limited".into(), json!(limited));
        entry.insert("num_live".into(), json!(num_live));
        entry.insert(
            "joined_count".into(),
            json!(members.count(Membership::Join)),
        );
        entry.insert(
            "invited_count".into(),
            json!(members.count(Membership::Invite)),
        );
        entry.insert("notification_count".into(), json!(notification_count));
        entry.insert("highlight_count".into(), json!(highlight_count));
        if let Some(c) = candidate {
            entry.insert("bump_stamp".into(), json!(c.bump));
            if self.is_dm(dms, room_id, user, c.membership)? {
                entry.insert("is_dm".into(), json!(true));
            }
        }
        self.display_fields(&state_now, user, &members, &mut entry)?;
        Ok(Some(Value::Object(entry)))
    }

    /// `name`, `avatar` and, for rooms without a name, `heroes` (up to five other
    /// members with their profiles), from the state the user may see.
    pub(super) fn display_fields(
        &self,
        state: &crate::rooms::StateMap,
        user: &UserId,
        members: &crate::rooms::RoomMembers,
        entry: &mut Map<String, Value>,
    ) -> Result<()> {
        let name = self
            .rooms
            .content_in(state, "m.room.name", "")?
            .and_then(|c| c["name"].as_str().map(str::to_owned))
            .filter(|n| !n.is_empty());
        if let Some(name) = &name {
            entry.insert("name".into(), json!(name));
        }
        if let Some(avatar) = self
            .rooms
            .content_in(state, "m.room.avatar", "")?
            .and_then(|c| c["url"].as_str().map(str::to_owned))
        {
            entry.insert("avatar".into(), json!(avatar));
        }
        if name.is_none() {
            let mut heroes = Vec::new();
            for (member, m) in members.all() {
                if member == user || !matches!(m, Membership::Join | Membership::Invite) {
                    continue;
                }
                let content = self
                    .rooms
                    .content_in(state, "m.room.member", member.as_str())?
                    .unwrap_or_default();
                let mut hero = json!({ "user_id": member });
                if let Some(n) = content["displayname"].as_str() {
                    hero["displayname"] = json!(n);
                }
                if let Some(a) = content["avatar_url"].as_str() {
                    hero["avatar_url"] = json!(a);
                }
                heroes.push(hero);
                if heroes.len() >= 5 {
                    break;
                }
            }
            entry.insert("heroes".into(), json!(heroes));
        }
        Ok(())
    }
}
