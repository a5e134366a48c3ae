//! History visibility: which timeline events a user may read. The client-server spec's
//! algorithm ("History visibility"), evaluated here once for every read path (`/messages`,
//! `/context`, `/event`, `/sync`, sliding sync).
//!
//! An event is visible to a user when, at the event (`m.room.history_visibility` and the
//! user's membership as of that event):
//! 1. the visibility was `world_readable`, or
//! 2. the user's membership was `join`, or
//! 3. the visibility was `shared` and the user was joined at the event or any time after, or
//! 4. the visibility was `invited` and the user's membership was `invite`;
//!
//! otherwise it is hidden. For the user's own membership events and for history visibility
//! changes, the more permissive of the values before and after the event counts, so users
//! see their own join and leave.
//!
//! Both inputs only change at a handful of positions (the room's history visibility events
//! and the user's membership events), so visibility is worked out as ranges of positions
//! once per read, never per event; a joined user reading events since their join takes no
//! extra lookups at all. The same membership history gives each served event its
//! `unsigned.membership` ([`RoomsService::add_memberships`]).

use std::sync::Arc;

use ruma::{RoomId, UserId};
use serde_json::Value;

use super::{members::Membership, read::Direction, EventFilter, RoomsService};
use crate::{events::Pdu, Result};

/// `m.room.history_visibility`, least permissive first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HistoryVisibility {
    Joined,
    Invited,
    Shared,
    WorldReadable,
}

impl HistoryVisibility {
    /// Reads the content of a history visibility event. A value the spec does not define
    /// counts as the strictest, `joined`.
    fn from_content(content: &Value) -> HistoryVisibility {
        match content.get("history_visibility").and_then(Value::as_str) {
            Some("world_readable") => HistoryVisibility::WorldReadable,
            Some("shared") => HistoryVisibility::Shared,
            Some("invited") => HistoryVisibility::Invited,
            _ => HistoryVisibility::Joined,
        }
    }
}

/// What decides one user's view of one room: the room's history visibility changes and
/// the user's membership changes, each as `(position, value)` sorted by position.
#[derive(Debug, Default)]
struct Inputs {
    visibility: Vec<(u64, HistoryVisibility)>,
    membership: Vec<(u64, Membership)>,
}

/// The value of the newest change at or before `pos`.
fn value_at<T: Copy>(changes: &[(u64, T)], pos: u64) -> Option<T> {
    let after = changes.partition_point(|(p, _)| *p <= pos);
    after.checked_sub(1).map(|i| changes[i].1)
}

impl Inputs {
    /// Whether an event at `pos` is visible, with the state as it is right after `pos`.
    fn visible_at(&self, pos: u64) -> bool {
        // Rooms start `shared` until a history visibility event says otherwise.
        let visibility = value_at(&self.visibility, pos).unwrap_or(HistoryVisibility::Shared);
        let membership = value_at(&self.membership, pos);
        match visibility {
            HistoryVisibility::WorldReadable => true,
            _ if membership == Some(Membership::Join) => true,
            HistoryVisibility::Shared => self
                .membership
                .iter()
                .any(|(p, m)| *p >= pos && *m == Membership::Join),
            HistoryVisibility::Invited => membership == Some(Membership::Invite),
            HistoryVisibility::Joined => false,
        }
    }

    /// The visible positions of `from..=to`, as inclusive ranges in ascending order.
    fn visible_ranges(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut changes: Vec<u64> = self
            .visibility
            .iter()
            .map(|(p, _)| *p)
            .chain(self.membership.iter().map(|(p, _)| *p))
            .filter(|p| (from..=to).contains(p))
            .collect();
        changes.sort_unstable();
        changes.dedup();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut add = |lo: u64, hi: u64| match ranges.last_mut() {
            Some(last) if last.1.saturating_add(1) == lo => last.1 = hi,
            _ => ranges.push((lo, hi)),
        };
        let mut cursor = from;
        for change in changes {
            // Between two changes nothing that decides visibility moves.
            if cursor < change && self.visible_at(cursor) {
                add(cursor, change - 1);
            }
            // The changing event itself: visible under the values before or after it, and
            // a user always sees their own leave from a room they were in or invited to.
            let before = change.checked_sub(1);
            let own_leave = value_at(&self.membership, change)
                .is_some_and(|m| matches!(m, Membership::Leave | Membership::Ban))
                && self.membership.iter().any(|(p, _)| *p == change)
                && before
                    .and_then(|p| value_at(&self.membership, p))
                    .is_some_and(|m| matches!(m, Membership::Join | Membership::Invite));
            if own_leave || self.visible_at(change) || before.is_some_and(|p| self.visible_at(p)) {
                add(change, change);
            }
            cursor = change.saturating_add(1);
        }
        if cursor <= to && self.visible_at(cursor) {
            add(cursor, to);
        }
        ranges
    }
}

/// One user's view of one room, worked out once and then asked about any number of
/// positions (the relation index and thread summaries check events one by one).
pub(super) struct Viewer {
    inputs: Inputs,
    wiped: u64,
    until: u64,
}

impl Viewer {
    /// Whether the user may see the room's event at `pos`.
    pub(super) fn sees(&self, pos: u64) -> bool {
        pos > self.wiped && pos <= self.until && !self.inputs.visible_ranges(pos, pos).is_empty()
    }
}

impl RoomsService {
    /// `user`'s view of the room up to position `until` (what they may read at most;
    /// [`RoomsService::visible_until`] capped by what is published).
    pub(super) fn viewer(&self, room_id: &RoomId, user: &UserId, until: u64) -> Result<Viewer> {
        Ok(Viewer {
            inputs: self.visibility_inputs(room_id, user)?,
            wiped: self.wiped_until(room_id, user)?,
            until,
        })
    }

    /// Timeline events with `lo < pos <= hi` that `user` may see (see the module docs), in
    /// the given direction, up to `limit` matching `filter`; also whether more visible
    /// events are left in the range. Every client read of a timeline goes through here;
    /// [`RoomsService::timeline_range`] is the raw read underneath.
    #[allow(clippy::too_many_arguments)]
    pub fn visible_timeline(
        &self,
        room_id: &RoomId,
        user: &UserId,
        lo: u64,
        hi: u64,
        dir: Direction,
        limit: usize,
        filter: Option<&EventFilter>,
    ) -> Result<(Vec<(u64, Arc<Pdu>)>, bool)> {
        // What the user wiped is gone for them (`wipe.rs`).
        let lo = lo.max(self.wiped_until(room_id, user)?);
        if lo >= hi {
            return Ok((Vec::new(), false));
        }
        if self.membership(room_id, user)? == Some(Membership::Join) {
            // A joined user sees everything since their current membership event: read as
            // usual, and look further only when the page reaches back before it.
            let (events, more) = self.timeline_range(room_id, lo, hi, dir, limit, filter)?;
            let Some(oldest) = events.iter().map(|(p, _)| *p).min() else {
                return Ok((events, more));
            };
            let since = self.member_event_pos(room_id, user)?;
            if let Some(since) = since.filter(|s| oldest >= *s) {
                // Older events left over are all visible when the range starts after the
                // join too; otherwise some of them must be.
                let more = more
                    && (dir == Direction::Forward
                        || lo + 1 >= since
                        || !self
                            .read_ranges(
                                room_id,
                                &self.visible_ranges(room_id, user, lo + 1, oldest - 1)?,
                                dir,
                                1,
                                filter,
                            )?
                            .0
                            .is_empty());
                return Ok((events, more));
            }
        }
        let ranges = self.visible_ranges(room_id, user, lo + 1, hi)?;
        self.read_ranges(room_id, &ranges, dir, limit, filter)
    }

    /// Whether `user` may see the event of `room_id` at timeline position `pos`.
    pub fn can_see_event(&self, room_id: &RoomId, user: &UserId, pos: u64) -> Result<bool> {
        if pos <= self.wiped_until(room_id, user)? {
            return Ok(false);
        }
        if self.membership(room_id, user)? == Some(Membership::Join)
            && self
                .member_event_pos(room_id, user)?
                .is_some_and(|s| pos >= s)
        {
            return Ok(true);
        }
        Ok(!self.visible_ranges(room_id, user, pos, pos)?.is_empty())
    }

    /// One event of `room_id` as `user` may see it (`/event`): 404 when it is not in the
    /// room or hidden from the user, 403 when the user may not read the room at all.
    pub fn visible_event(
        &self,
        room_id: &RoomId,
        user: &UserId,
        event_id: &ruma::EventId,
    ) -> Result<Arc<Pdu>> {
        let until = self.visible_until(room_id, user)?;
        match self.get_pdu_with_pos(event_id)? {
            Some((pos, pdu))
                if pdu.room_id == room_id
                    && pos <= until
                    && self.can_see_event(room_id, user, pos)? =>
            {
                Ok(pdu)
            }
            _ => Err(crate::Error::not_found("Event not found")),
        }
    }

    /// Reads up to `limit` events from inclusive position ranges (ascending), walking them
    /// in `dir`; also whether events are left over.
    fn read_ranges(
        &self,
        room_id: &RoomId,
        ranges: &[(u64, u64)],
        dir: Direction,
        limit: usize,
        filter: Option<&EventFilter>,
    ) -> Result<(Vec<(u64, Arc<Pdu>)>, bool)> {
        let ordered: Vec<(u64, u64)> = match dir {
            Direction::Forward => ranges.to_vec(),
            Direction::Backward => ranges.iter().rev().copied().collect(),
        };
        let mut out = Vec::new();
        for (i, &(from, to)) in ordered.iter().enumerate() {
            let want = limit.saturating_sub(out.len()).max(1);
            let (events, more) =
                self.timeline_range(room_id, from.saturating_sub(1), to, dir, want, filter)?;
            out.extend(events);
            if out.len() >= limit {
                let mut left = more;
                for &(from, to) in &ordered[i + 1..] {
                    if left {
                        break;
                    }
                    left = !self
                        .timeline_range(room_id, from.saturating_sub(1), to, dir, 1, filter)?
                        .0
                        .is_empty();
                }
                return Ok((out, left));
            }
        }
        Ok((out, false))
    }

    /// Adds `unsigned.membership` (MSC4115, spec v1.11) to client-format events of
    /// `room_id` served to `user`: the user's membership right after each event (its own
    /// change included), `leave` before they ever had one. Clients read it to tell
    /// messages sent before they joined. Every read path calls it on what it serves.
    pub fn add_memberships(
        &self,
        room_id: &RoomId,
        user: &UserId,
        events: &mut [Value],
    ) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // The user's latest membership change, from memory: every event at or after it
        // gets that membership; only older events need the history from storage.
        let latest = self.user_room(user, room_id)?;
        let mut history: Option<Vec<(u64, Membership)>> = None;
        for event in events {
            let Some(pos) = event["event_id"]
                .as_str()
                .and_then(|id| ruma::EventId::parse(id).ok())
                .map(|id| self.event_pos(&id))
                .transpose()?
                .flatten()
            else {
                continue;
            };
            let membership = match latest {
                Some((m, since)) if since <= pos => m,
                _ => {
                    if history.is_none() {
                        history = Some(self.membership_history(room_id, user)?);
                    }
                    value_at(history.as_deref().unwrap_or_default(), pos)
                        .unwrap_or(Membership::Leave)
                }
            };
            if !event["unsigned"].is_object() {
                event["unsigned"] = serde_json::json!({});
            }
            event["unsigned"]["membership"] = Value::from(membership.as_str());
        }
        Ok(())
    }

    /// The user's membership changes in the room, `(position, membership)` ascending.
    fn membership_history(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<Vec<(u64, Membership)>> {
        let mut out = Vec::new();
        for (pos, id) in self.state_history(room_id, "m.room.member", user.as_str())? {
            if let Some(pdu) = self.get_pdu(&id)? {
                let content: Value = serde_json::from_str(pdu.content.get())?;
                out.push((pos, Membership::from_content(&content)));
            }
        }
        Ok(out)
    }

    /// The visible positions of `from..=to` for `user`, as inclusive ascending ranges.
    fn visible_ranges(
        &self,
        room_id: &RoomId,
        user: &UserId,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, u64)>> {
        if from > to {
            return Ok(Vec::new());
        }
        Ok(self
            .visibility_inputs(room_id, user)?
            .visible_ranges(from, to))
    }

    /// The history visibility and membership changes that decide what `user` sees.
    fn visibility_inputs(&self, room_id: &RoomId, user: &UserId) -> Result<Inputs> {
        let mut inputs = Inputs::default();
        for (pos, id) in self.state_history(room_id, "m.room.history_visibility", "")? {
            if let Some(pdu) = self.get_pdu(&id)? {
                let content: Value = serde_json::from_str(pdu.content.get())?;
                inputs
                    .visibility
                    .push((pos, HistoryVisibility::from_content(&content)));
            }
        }
        inputs.membership = self.membership_history(room_id, user)?;
        Ok(inputs)
    }

    /// The position of the user's current member event in the room (from the cached
    /// room list of the user: every membership write keeps it current).
    fn member_event_pos(&self, room_id: &RoomId, user: &UserId) -> Result<Option<u64>> {
        Ok(self.user_room(user, room_id)?.map(|(_, pos)| pos))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{HistoryVisibility as H, *};
    use crate::{
        config::Config,
        rooms::{CreateRoom, MemberProfile, NewEvent},
        services::Services,
    };

    async fn say(s: &Services, room: &RoomId, sender: &UserId, body: &str) -> u64 {
        let guard = s.rooms.lock(room).await;
        let event = NewEvent::message(
            "m.room.message",
            json!({ "msgtype": "m.text", "body": body }),
        );
        s.rooms.send(guard, sender, event).await.unwrap().1
    }

    fn bodies(events: &[(u64, Arc<Pdu>)]) -> Vec<String> {
        events
            .iter()
            .map(|(_, p)| {
                let content: Value = serde_json::from_str(p.content.get()).unwrap();
                content["body"]
                    .as_str()
                    .unwrap_or(p.kind.to_string().as_str())
                    .to_owned()
            })
            .collect()
    }

    #[tokio::test]
    async fn pages_count_and_report_only_visible_events() {
        let s = Services::in_memory(Config::default()).unwrap();
        let alice = UserId::parse("@alice:localhost").unwrap();
        let bob = UserId::parse("@bob:localhost").unwrap();
        let req = CreateRoom {
            preset: Some("public_chat".into()),
            initial_state: vec![(
                "m.room.history_visibility".into(),
                String::new(),
                json!({ "history_visibility": "joined" }),
            )],
            ..Default::default()
        };
        let room = s.rooms.create_room(&alice, req).await.unwrap();
        let first = say(&s, &room, &alice, "a1").await;
        let hidden = say(&s, &room, &alice, "a2").await;
        s.rooms
            .join(&room, &bob, &MemberProfile::default(), None)
            .await
            .unwrap();
        let last = say(&s, &room, &alice, "b1").await;
        let read = |dir, limit| {
            s.rooms
                .visible_timeline(&room, &bob, first - 1, last, dir, limit, None)
                .unwrap()
        };
        let (events, more) = read(Direction::Backward, 2);
        assert_eq!(bodies(&events), ["b1", "m.room.member"]);
        assert!(!more, "only hidden events are left");
        let (events, more) = read(Direction::Backward, 1);
        assert_eq!(bodies(&events), ["b1"]);
        assert!(more, "bob's join is left");
        let (events, more) = read(Direction::Forward, 10);
        assert_eq!(bodies(&events), ["m.room.member", "b1"]);
        assert!(!more);
        assert!(!s.rooms.can_see_event(&room, &bob, hidden).unwrap());
        assert!(s.rooms.can_see_event(&room, &bob, last).unwrap());
        assert!(s.rooms.can_see_event(&room, &alice, hidden).unwrap());
    }

    fn inputs(visibility: &[(u64, H)], membership: &[(u64, Membership)]) -> Inputs {
        Inputs {
            visibility: visibility.to_vec(),
            membership: membership.to_vec(),
        }
    }

    #[test]
    fn joined_sees_from_own_join_until_leave() {
        let i = inputs(
            &[(3, H::Joined)],
            &[(10, Membership::Join), (20, Membership::Leave)],
        );
        // Before the change the room was `shared` (the change itself is visible under the
        // old value); afterwards only the joined period, including the user's own leave.
        assert_eq!(i.visible_ranges(1, 30), vec![(1, 3), (10, 20)]);
    }

    #[test]
    fn invited_sees_from_invite() {
        let i = inputs(
            &[(3, H::Invited)],
            &[(10, Membership::Invite), (15, Membership::Join)],
        );
        assert_eq!(i.visible_ranges(4, 30), vec![(10, 30)]);
        let j = inputs(
            &[(3, H::Joined)],
            &[(10, Membership::Invite), (15, Membership::Join)],
        );
        assert_eq!(j.visible_ranges(4, 30), vec![(15, 30)]);
    }

    #[test]
    fn shared_shows_history_to_anyone_who_joined_later() {
        let i = inputs(
            &[(3, H::Shared)],
            &[(10, Membership::Join), (20, Membership::Leave)],
        );
        assert_eq!(i.visible_ranges(1, 30), vec![(1, 20)]);
        // Never joined: nothing.
        let never = inputs(&[(3, H::Shared)], &[(10, Membership::Invite)]);
        assert_eq!(never.visible_ranges(4, 30), vec![]);
    }

    #[test]
    fn own_invite_rejection_is_visible() {
        let i = inputs(
            &[(3, H::Joined)],
            &[(10, Membership::Invite), (12, Membership::Leave)],
        );
        assert_eq!(i.visible_ranges(4, 30), vec![(12, 12)]);
    }

    #[test]
    fn world_readable_periods_are_visible_to_anyone() {
        let i = inputs(
            &[(3, H::Joined), (8, H::WorldReadable), (12, H::Joined)],
            &[],
        );
        assert_eq!(i.visible_ranges(4, 30), vec![(8, 12)]);
    }

    #[test]
    fn single_positions() {
        let i = inputs(&[(3, H::Joined)], &[(10, Membership::Join)]);
        assert!(i.visible_ranges(9, 9).is_empty());
        assert_eq!(i.visible_ranges(10, 10), vec![(10, 10)]);
        assert_eq!(i.visible_ranges(11, 11), vec![(11, 11)]);
    }
}
