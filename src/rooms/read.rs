//! Reading timelines: pagination tokens, event filters, `/messages`, `/context`, and
//! which events a user may see.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{EventId, OwnedEventId, RoomId, UserId};
use serde_json::Value;

use super::{append::parse_event_id, members::Membership, RoomsService};
use crate::{events::Pdu, storage::keys, Error, Result};

/// A pagination token: the point right after timeline position `0`.
/// Written `t{pos}`; sync tokens `s{pos}_…` are accepted too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token(pub u64);

impl Token {
    /// Parses `t123` or a sync token `s123_…`.
    pub fn parse(s: &str) -> Result<Token> {
        let digits = s
            .strip_prefix('t')
            .or_else(|| {
                s.strip_prefix('s')
                    .map(|r| r.split('_').next().unwrap_or(""))
            })
            .ok_or_else(|| Error::invalid_param(format!("invalid pagination token {s:?}")))?;
        digits
            .parse()
            .map(Token)
            .map_err(|_| Error::invalid_param(format!("invalid pagination token {s:?}")))
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// Pagination direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Towards older events.
    Backward,
    /// Towards newer events.
    Forward,
}

/// A `RoomEventFilter`, parsed leniently from its JSON.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Maximum events.
    pub limit: Option<usize>,
    types: Option<Vec<String>>,
    not_types: Vec<String>,
    senders: Option<Vec<String>>,
    not_senders: Vec<String>,
    rooms: Option<Vec<String>>,
    not_rooms: Vec<String>,
    contains_url: Option<bool>,
    /// Only members of senders in the returned timeline are sent as state.
    pub lazy_load_members: bool,
    /// Send members again even if the client has them.
    pub include_redundant_members: bool,
}

fn strings(v: &Value, key: &str) -> Option<Vec<String>> {
    v.get(key)?.as_array().map(|a| {
        a.iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    })
}

fn glob(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

impl EventFilter {
    /// Reads a filter object (missing keys mean "no restriction").
    pub fn from_json(v: &Value) -> EventFilter {
        EventFilter {
            limit: v.get("limit").and_then(Value::as_u64).map(|l| l as usize),
            types: strings(v, "types"),
            not_types: strings(v, "not_types").unwrap_or_default(),
            senders: strings(v, "senders"),
            not_senders: strings(v, "not_senders").unwrap_or_default(),
            rooms: strings(v, "rooms"),
            not_rooms: strings(v, "not_rooms").unwrap_or_default(),
            contains_url: v.get("contains_url").and_then(Value::as_bool),
            lazy_load_members: v
                .get("lazy_load_members")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            include_redundant_members: v
                .get("include_redundant_members")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }

    /// Whether a room passes the `rooms`/`not_rooms` lists.
    pub fn allows_room(&self, room_id: &RoomId) -> bool {
        !self.not_rooms.iter().any(|r| r == room_id.as_str())
            && self
                .rooms
                .as_ref()
                .is_none_or(|rs| rs.iter().any(|r| r == room_id.as_str()))
    }

    /// Whether an event passes the type/sender/url conditions.
    pub fn allows(&self, pdu: &Pdu) -> bool {
        let kind = pdu.kind.to_string();
        if self.not_types.iter().any(|t| glob(t, &kind)) {
            return false;
        }
        if let Some(types) = &self.types {
            if !types.iter().any(|t| glob(t, &kind)) {
                return false;
            }
        }
        if self.not_senders.iter().any(|s| s == pdu.sender.as_str()) {
            return false;
        }
        if let Some(senders) = &self.senders {
            if !senders.iter().any(|s| s == pdu.sender.as_str()) {
                return false;
            }
        }
        if let Some(want_url) = self.contains_url {
            let has_url = pdu.content.get().contains("\"url\"");
            if has_url != want_url {
                return false;
            }
        }
        true
    }
}

/// A page of `/messages`.
pub struct MessagesPage {
    /// Events in the requested direction's order.
    pub chunk: Vec<Arc<Pdu>>,
    /// Token to continue from, absent when there is nothing more.
    pub end: Option<Token>,
    /// With lazy-loaded members: the member events of the chunk's senders.
    pub state: Vec<Arc<Pdu>>,
}

impl RoomsService {
    /// The highest timeline position `user` may read in a room (403 if none).
    pub fn visible_until(&self, room_id: &RoomId, user: &UserId) -> Result<u64> {
        if !self.exists(room_id)? {
            return Err(Error::not_found("No known room with that id"));
        }
        let visibility = self.history_visibility(room_id)?;
        match self.membership(room_id, user)? {
            Some(Membership::Join) => return Ok(u64::MAX),
            Some(Membership::Leave | Membership::Ban) if visibility != "world_readable" => {
                let key = keys::strs(&[user.as_str(), room_id.as_str()]);
                let record: Option<Value> = self.storage.trees.user_rooms.get_json(&key)?;
                // A departed user reads history up to leaving, if they were ever joined.
                if let Some(record) = record.filter(|r| r["joined"] == true) {
                    if let Some(pos) = record["pos"].as_u64() {
                        return Ok(pos);
                    }
                }
            }
            _ => {}
        }
        if visibility == "world_readable" {
            return Ok(u64::MAX);
        }
        Err(Error::forbidden("You are not allowed to view this room"))
    }

    /// Timeline events with `lo < pos <= hi`, in the given direction, up to `limit`
    /// matching `filter`. Returns the events with positions and whether it stopped early.
    /// This is the raw read: what a user may see is [`RoomsService::visible_timeline`].
    pub fn timeline_range(
        &self,
        room_id: &RoomId,
        lo: u64,
        hi: u64,
        dir: Direction,
        limit: usize,
        filter: Option<&EventFilter>,
    ) -> Result<(Vec<(u64, Arc<Pdu>)>, bool)> {
        // The newest entries of a busy room are in memory: an incremental sync reads
        // those without a storage scan.
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room_id)
            .and_then(|r| r.range(lo, hi));
        let Some(entries) = recent else {
            return self.timeline_range_stored(room_id, lo, hi, dir, limit, filter);
        };
        let entries = entries.into_iter().map(Ok);
        match dir {
            Direction::Forward => self.take_events(entries, limit, filter),
            Direction::Backward => self.take_events(entries.rev(), limit, filter),
        }
    }

    /// [`Self::timeline_range`] read from storage.
    pub(super) fn timeline_range_stored(
        &self,
        room_id: &RoomId,
        lo: u64,
        hi: u64,
        dir: Direction,
        limit: usize,
        filter: Option<&EventFilter>,
    ) -> Result<(Vec<(u64, Arc<Pdu>)>, bool)> {
        let from = keys::KeyBuilder::new()
            .str(room_id.as_str())
            .u64(lo.saturating_add(1))
            .build();
        let to = keys::KeyBuilder::new()
            .str(room_id.as_str())
            .u64(hi.saturating_add(1).max(1))
            .build();
        if lo >= hi {
            return Ok((Vec::new(), false));
        }
        let entries = self
            .storage
            .trees
            .room_timeline
            .range(&from, &to, dir == Direction::Backward)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((keys::trailing_u64(&k).unwrap_or(0), parse_event_id(&v)?))
            });
        self.take_events(entries, limit, filter)
    }

    /// Loads timeline entries in the order given, keeping up to `limit` events that pass
    /// `filter`; also says whether entries were left over.
    fn take_events(
        &self,
        mut entries: impl Iterator<Item = Result<(u64, OwnedEventId)>>,
        limit: usize,
        filter: Option<&EventFilter>,
    ) -> Result<(Vec<(u64, Arc<Pdu>)>, bool)> {
        let mut out = Vec::new();
        for entry in entries.by_ref() {
            let (pos, id) = entry?;
            let Some(pdu) = self.get_pdu(&id)? else {
                continue;
            };
            if filter.is_none_or(|f| f.allows(&pdu)) {
                out.push((pos, pdu));
                if out.len() >= limit {
                    break;
                }
            }
        }
        let more = out.len() >= limit && entries.next().is_some();
        Ok((out, more))
    }

    /// `/messages`: pages through a room's timeline as `user` may see it.
    pub fn messages(
        &self,
        room_id: &RoomId,
        user: &UserId,
        from: Option<Token>,
        to: Option<Token>,
        dir: Direction,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<(Token, MessagesPage)> {
        let until = self.visible_until(room_id, user)?;
        let cap = until.min(self.current_pos());
        let limit = limit.clamp(1, 1000);
        let (start, events, end) = match dir {
            Direction::Backward => {
                let from = from.map(|t| t.0).unwrap_or(cap).min(cap);
                let lo = to.map(|t| t.0).unwrap_or(0);
                let (events, more) =
                    self.visible_timeline(room_id, user, lo, from, dir, limit, Some(filter))?;
                let end = more.then(|| events.last().map(|(pos, _)| Token(pos - 1)));
                (Token(from), events, end.flatten())
            }
            Direction::Forward => {
                let from = from.map(|t| t.0).unwrap_or(0);
                let hi = to.map(|t| t.0).unwrap_or(cap).min(cap);
                let (events, more) =
                    self.visible_timeline(room_id, user, from, hi, dir, limit, Some(filter))?;
                let end = more.then(|| events.last().map(|(pos, _)| Token(*pos)));
                (Token(from), events, end.flatten())
            }
        };
        let chunk: Vec<Arc<Pdu>> = events.into_iter().map(|(_, p)| p).collect();
        let state = if filter.lazy_load_members {
            self.sender_members(room_id, until, &chunk)?
        } else {
            Vec::new()
        };
        Ok((start, MessagesPage { chunk, end, state }))
    }

    /// The member events of the senders of `events`, as of `until` (current state when
    /// the user may read the room live).
    fn sender_members(
        &self,
        room_id: &RoomId,
        until: u64,
        events: &[Arc<Pdu>],
    ) -> Result<Vec<Arc<Pdu>>> {
        let senders: BTreeSet<&str> = events.iter().map(|p| p.sender.as_str()).collect();
        let at = (until != u64::MAX)
            .then(|| self.state_at(room_id, until))
            .transpose()?;
        let mut out = Vec::new();
        for sender in senders {
            let member = match &at {
                None => self.state_event_str(room_id, "m.room.member", sender)?,
                Some(map) => match map.get(&("m.room.member".to_owned(), sender.to_owned())) {
                    Some(id) => self.get_pdu(id)?,
                    None => None,
                },
            };
            out.extend(member);
        }
        Ok(out)
    }

    /// `/context`: events around one event, plus tokens to page further.
    pub fn context(
        &self,
        room_id: &RoomId,
        user: &UserId,
        event_id: &EventId,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<ContextPage> {
        let cap = self.visible_until(room_id, user)?.min(self.current_pos());
        let Some((pos, event)) = self.get_pdu_with_pos(event_id)? else {
            return Err(Error::not_found("Event not found"));
        };
        if event.room_id != room_id || pos > cap || !self.can_see_event(room_id, user, pos)? {
            return Err(Error::not_found("Event not found"));
        }
        // As Synapse: the smaller half before the event, the larger after it.
        let before_n = limit.min(100) / 2;
        let after_n = limit.min(100) - before_n;
        let (before, _) = self.visible_timeline(
            room_id,
            user,
            0,
            pos - 1,
            Direction::Backward,
            before_n.max(1),
            Some(filter),
        )?;
        let (after, _) = self.visible_timeline(
            room_id,
            user,
            pos,
            cap,
            Direction::Forward,
            after_n.max(1),
            Some(filter),
        )?;
        let before: Vec<_> = if before_n == 0 { Vec::new() } else { before };
        let after: Vec<_> = if after_n == 0 { Vec::new() } else { after };
        let start = Token(before.last().map_or(pos, |(p, _)| *p) - 1);
        let end_pos = after.last().map_or(pos, |(p, _)| *p);
        let state_map = self.state_at(room_id, end_pos)?;
        let mut state = self.state_events(&state_map)?;
        if filter.lazy_load_members {
            let senders: BTreeSet<String> = before
                .iter()
                .chain(after.iter())
                .map(|(_, p)| p.sender.to_string())
                .chain([event.sender.to_string()])
                .collect();
            state.retain(|p| {
                p.kind.to_string() != "m.room.member"
                    || p.state_key.as_ref().is_some_and(|k| senders.contains(k))
            });
        }
        Ok(ContextPage {
            event,
            events_before: before.into_iter().map(|(_, p)| p).collect(),
            events_after: after.into_iter().map(|(_, p)| p).collect(),
            start,
            end: Token(end_pos),
            state,
        })
    }
}

/// The result of `/context`.
pub struct ContextPage {
    /// The requested event.
    pub event: Arc<Pdu>,
    /// Older events, newest first.
    pub events_before: Vec<Arc<Pdu>>,
    /// Newer events, oldest first.
    pub events_after: Vec<Arc<Pdu>>,
    /// Token before the oldest returned event.
    pub start: Token,
    /// Token after the newest returned event.
    pub end: Token,
    /// State at the end of the returned window.
    pub state: Vec<Arc<Pdu>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_accept_sync_tokens() {
        assert_eq!(Token::parse("t42").unwrap(), Token(42));
        assert_eq!(Token::parse("s17_3_4").unwrap(), Token(17));
        assert_eq!(Token(5).to_string(), "t5");
        assert!(Token::parse("x1").is_err());
        assert!(Token::parse("tabc").is_err());
    }

    #[test]
    fn the_window_takes_other_processes_events_in_order() {
        let id = |n: u64| OwnedEventId::try_from(format!("$e{n}")).unwrap();
        let mut w = RecentEvents::starting_at(10);
        w.push(10, id(10));
        w.push(14, id(14));
        w.insert(12, id(12));
        w.insert(12, id(12));
        w.insert(5, id(5));
        let got = w.range(9, 20).unwrap();
        assert_eq!(got, vec![(10, id(10)), (12, id(12)), (14, id(14))]);
        assert!(
            w.range(8, 20).is_none(),
            "nothing before the window is claimed"
        );
        for n in 15..40 {
            w.insert(n, id(n));
        }
        assert_eq!(w.entries.len(), RecentEvents::CAPACITY);
        assert!(w.range(22, 39).is_none());
        assert_eq!(w.range(23, 39).unwrap().len(), RecentEvents::CAPACITY);
    }

    #[test]
    fn glob_matches_prefix_wildcards() {
        assert!(glob("m.room.*", "m.room.message"));
        assert!(!glob("m.room.message", "m.room.member"));
    }
}

/// The newest timeline entries of one room, in position order: every event of the room
/// after `complete_after` is here (the window starts at the room's first append since
/// start and keeps the newest [`RecentEvents::CAPACITY`]).
#[derive(Debug)]
pub(super) struct RecentEvents {
    complete_after: u64,
    entries: std::collections::VecDeque<(u64, OwnedEventId)>,
}

impl RecentEvents {
    /// Entries kept per room.
    const CAPACITY: usize = 16;

    /// A window whose first entry will be at `pos`.
    pub(super) fn starting_at(pos: u64) -> RecentEvents {
        RecentEvents {
            complete_after: pos.saturating_sub(1),
            entries: Default::default(),
        }
    }

    /// Adds the room's next event.
    pub(super) fn push(&mut self, pos: u64, id: OwnedEventId) {
        if self.entries.len() >= Self::CAPACITY {
            if let Some((old, _)) = self.entries.pop_front() {
                self.complete_after = old;
            }
        }
        self.entries.push_back((pos, id));
    }

    /// Adds an event of the room in position order (another process appended it, so
    /// events after it may be here already); an event before the window is left out.
    pub(super) fn insert(&mut self, pos: u64, id: OwnedEventId) {
        if pos <= self.complete_after {
            return;
        }
        let at = self.entries.partition_point(|(p, _)| *p < pos);
        if self.entries.get(at).is_some_and(|(p, _)| *p == pos) {
            return;
        }
        self.entries.insert(at, (pos, id));
        if self.entries.len() > Self::CAPACITY {
            if let Some((old, _)) = self.entries.pop_front() {
                self.complete_after = old;
            }
        }
    }

    /// The entries with `lo < pos <= hi`, when the window holds all of them.
    pub(super) fn range(&self, lo: u64, hi: u64) -> Option<Vec<(u64, OwnedEventId)>> {
        if lo < self.complete_after {
            return None;
        }
        Some(
            self.entries
                .iter()
                .filter(|(p, _)| *p > lo && *p <= hi)
                .cloned()
                .collect(),
        )
    }
}
