//! The relation index and the thread records: what `/relations`, `/threads` and the
//! `m.thread` bundled aggregation read instead of the timeline. They are written in the
//! same batch as the event that adds a relation (`append`) or takes one away (a
//! redaction: redacted content loses `m.relates_to`), and go with the room's other keys
//! when it is purged.
//!
//! This module is the only one naming these trees and building their keys:
//! - `relations`: `room_id, parent event_id, rel_type, pos(u64)` → `event_id`: every event
//!   whose content has `m.relates_to.{event_id, rel_type}` (encrypted events too: their
//!   `m.relates_to` stays in the clear). One prefix scan lists a parent's relations of one
//!   type in timeline order.
//! - `thread_summaries`: `room_id, root event_id` → JSON `{count, latest_pos, latest}`: the
//!   number of `m.thread` replies to a root and the newest one.
//! - `thread_participants`: `room_id, root event_id, user_id` → `count(u64)`: the replies
//!   each user sent to a thread (absent at zero).
//! - `thread_activity`: `room_id, latest_pos(u64), root event_id` → `""`: threads by their
//!   newest reply, for `/threads`.
//!
//! Data written before the index existed is indexed once at start: when the `meta`
//! marker [`INDEX_MARKER`] is missing, [`RoomsService::build_relation_index`] clears the
//! four trees and reads every stored event in timeline order.

use std::collections::{hash_map::Entry, HashMap, HashSet};

use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod types_cache;
pub(super) use types_cache::TypesCache;

use super::{append::parse_event_id, read::Direction, RoomsService};
use crate::{
    storage::{keys, Batch, Tree, Trees},
    Result,
};

/// The relation type of thread replies.
pub(super) const THREAD: &str = "m.thread";

/// `meta` key present once every stored event is in the relation index (value: version).
const INDEX_MARKER: &[u8] = b"relations_index";

/// Events read per committed batch while building the index.
const BUILD_BATCH: usize = 1_000;

/// The relation a client-format content declares: the parent event and the `rel_type`
/// (both required; a relation without a type is no relation in the spec's sense).
pub(super) fn relation_in(content: &Value) -> Option<(OwnedEventId, String)> {
    let relates = content.get("m.relates_to")?;
    let parent = EventId::parse(relates.get("event_id")?.as_str()?).ok()?;
    let rel_type = relates.get("rel_type")?.as_str()?;
    (!rel_type.is_empty()).then(|| (parent, rel_type.to_owned()))
}

fn relations_prefix(room: &RoomId, parent: &EventId, rel_type: &str) -> keys::KeyBuilder {
    keys::KeyBuilder::new()
        .str(room.as_str())
        .str(parent.as_str())
        .str(rel_type)
}

fn relation_key(room: &RoomId, parent: &EventId, rel_type: &str, pos: u64) -> Vec<u8> {
    relations_prefix(room, parent, rel_type).u64(pos).build()
}

fn summary_key(room: &RoomId, root: &EventId) -> Vec<u8> {
    keys::strs(&[room.as_str(), root.as_str()])
}

fn participant_key(room: &RoomId, root: &EventId, user: &UserId) -> Vec<u8> {
    keys::strs(&[room.as_str(), root.as_str(), user.as_str()])
}

fn activity_key(room: &RoomId, pos: u64, root: &EventId) -> Vec<u8> {
    keys::KeyBuilder::new()
        .str(room.as_str())
        .u64(pos)
        .str(root.as_str())
        .build()
}

/// A thread as stored: how many replies, and the newest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ThreadSummary {
    /// Replies (`m.thread` relations) to the root.
    pub count: u64,
    /// Timeline position of the newest reply.
    pub latest_pos: u64,
    /// The newest reply.
    pub latest: OwnedEventId,
}

/// One thread's record as read and as it is to be written.
struct SummaryEdit {
    room: OwnedRoomId,
    root: OwnedEventId,
    before: Option<ThreadSummary>,
    now: Option<ThreadSummary>,
}

/// One relation: the relating event, where it is and what it relates to.
pub(super) struct Relation<'a> {
    pub room: &'a RoomId,
    pub pos: u64,
    pub event_id: &'a EventId,
    pub sender: &'a UserId,
    pub parent: &'a EventId,
    pub rel_type: &'a str,
}

/// Changes to the index collected for one batch: the relation entries go into the batch
/// at once; thread records are read once, changed in memory (so several changes to one
/// thread see each other) and written by [`IndexWrites::write`].
///
/// Removals must come before additions in one set of writes (a redaction is applied
/// before the event that carries it): a removal looks for the next newest reply in
/// storage, where additions of the same batch are not yet.
pub(super) struct IndexWrites<'a> {
    trees: &'a Trees,
    /// Every parent whose relations change (for [`TypesCache::forget`]).
    parents: Vec<OwnedEventId>,
    summaries: HashMap<Vec<u8>, SummaryEdit>,
    participants: HashMap<Vec<u8>, u64>,
    removed: HashSet<Vec<u8>>,
}

impl<'a> IndexWrites<'a> {
    pub(super) fn new(trees: &'a Trees) -> IndexWrites<'a> {
        IndexWrites {
            trees,
            parents: Vec::new(),
            summaries: HashMap::new(),
            participants: HashMap::new(),
            removed: HashSet::new(),
        }
    }

    fn summary(&mut self, room: &RoomId, root: &EventId) -> Result<&mut SummaryEdit> {
        let trees = self.trees;
        Ok(match self.summaries.entry(summary_key(room, root)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let before: Option<ThreadSummary> = trees.thread_summaries.get_json(e.key())?;
                e.insert(SummaryEdit {
                    room: room.to_owned(),
                    root: root.to_owned(),
                    now: before.clone(),
                    before,
                })
            }
        })
    }

    fn participant(&mut self, room: &RoomId, root: &EventId, user: &UserId) -> Result<&mut u64> {
        let trees = self.trees;
        Ok(
            match self.participants.entry(participant_key(room, root, user)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let count = trees
                        .thread_participants
                        .get(e.key())?
                        .and_then(|v| keys::leading_u64(&v))
                        .unwrap_or(0);
                    e.insert(count)
                }
            },
        )
    }

    /// Indexes a new relation; an `m.thread` one counts as the thread's newest reply
    /// unless a newer one is already known.
    pub(super) fn add(&mut self, batch: &mut Batch, r: &Relation<'_>) -> Result<()> {
        let key = relation_key(r.room, r.parent, r.rel_type, r.pos);
        self.parents.push(r.parent.to_owned());
        self.removed.remove(&key);
        batch.insert(&self.trees.relations, &key, r.event_id.as_bytes());
        if r.rel_type != THREAD {
            return Ok(());
        }
        *self.participant(r.room, r.parent, r.sender)? += 1;
        let edit = self.summary(r.room, r.parent)?;
        edit.now = Some(match edit.now.take() {
            Some(cur) if cur.latest_pos > r.pos => ThreadSummary {
                count: cur.count + 1,
                ..cur
            },
            cur => ThreadSummary {
                count: cur.map_or(0, |c| c.count) + 1,
                latest_pos: r.pos,
                latest: r.event_id.to_owned(),
            },
        });
        Ok(())
    }

    /// Takes a relation out of the index (its event was redacted); a thread whose newest
    /// reply goes falls back to the one before, a thread without replies goes.
    pub(super) fn remove(&mut self, batch: &mut Batch, r: &Relation<'_>) -> Result<()> {
        let key = relation_key(r.room, r.parent, r.rel_type, r.pos);
        self.parents.push(r.parent.to_owned());
        batch.remove(&self.trees.relations, &key);
        self.removed.insert(key);
        if r.rel_type != THREAD {
            return Ok(());
        }
        let count = self.participant(r.room, r.parent, r.sender)?;
        *count = count.saturating_sub(1);
        let previous = self.newest_reply_before(r.room, r.parent, r.pos)?;
        let edit = self.summary(r.room, r.parent)?;
        let Some(cur) = edit.now.take() else {
            return Ok(());
        };
        edit.now = match previous {
            _ if cur.count <= 1 => None,
            _ if cur.latest_pos != r.pos => Some(ThreadSummary {
                count: cur.count - 1,
                ..cur
            }),
            Some((latest_pos, latest)) => Some(ThreadSummary {
                count: cur.count - 1,
                latest_pos,
                latest,
            }),
            None => None,
        };
        Ok(())
    }

    /// The newest reply of a thread other than the one at `pos` and not removed here.
    fn newest_reply_before(
        &self,
        room: &RoomId,
        root: &EventId,
        pos: u64,
    ) -> Result<Option<(u64, OwnedEventId)>> {
        let prefix = relations_prefix(room, root, THREAD).build();
        for kv in self.trees.relations.scan_prefix_dir(&prefix, true) {
            let (k, v) = kv?;
            if self.removed.contains(&k) || keys::trailing_u64(&k) == Some(pos) {
                continue;
            }
            if let Some(p) = keys::trailing_u64(&k) {
                return Ok(Some((p, parse_event_id(&v)?)));
            }
        }
        Ok(None)
    }

    /// The parents whose relations these writes change.
    pub(super) fn parents(&self) -> &[OwnedEventId] {
        &self.parents
    }

    /// Adds the changed thread records to the batch.
    pub(super) fn write(self, batch: &mut Batch) -> Result<()> {
        let trees = self.trees;
        for (key, edit) in self.summaries {
            if edit.before == edit.now {
                continue;
            }
            if let Some(before) = &edit.before {
                batch.remove(
                    &trees.thread_activity,
                    &activity_key(&edit.room, before.latest_pos, &edit.root),
                );
            }
            match &edit.now {
                Some(now) => {
                    batch.insert_json(&trees.thread_summaries, &key, now)?;
                    batch.insert(
                        &trees.thread_activity,
                        &activity_key(&edit.room, now.latest_pos, &edit.root),
                        b"",
                    );
                }
                None => batch.remove(&trees.thread_summaries, &key),
            }
        }
        for (key, count) in self.participants {
            if count == 0 {
                batch.remove(&trees.thread_participants, &key);
            } else {
                batch.insert(&trees.thread_participants, &key, &count.to_be_bytes());
            }
        }
        Ok(())
    }
}

impl RoomsService {
    /// The trees of the relation index, for the purge (every key starts with the room).
    pub(super) fn relation_trees(&self) -> [&Tree; 4] {
        let t = &self.storage.trees;
        [
            &t.relations,
            &t.thread_summaries,
            &t.thread_participants,
            &t.thread_activity,
        ]
    }

    /// Relations of `parent` of one type with `lo < pos <= hi`, walking in `dir`:
    /// `(pos, event_id)`.
    pub(super) fn relation_range<'a>(
        &'a self,
        room: &RoomId,
        parent: &EventId,
        rel_type: &str,
        lo: u64,
        hi: u64,
        dir: Direction,
    ) -> impl Iterator<Item = Result<(u64, OwnedEventId)>> + 'a {
        let prefix = relations_prefix(room, parent, rel_type);
        let from = prefix.clone().u64(lo.saturating_add(1)).build();
        // Just past `hi`'s key: every key of this prefix is the prefix and 8 bytes.
        let mut to = prefix.u64(hi).build();
        to.push(0);
        self.storage
            .trees
            .relations
            .range(&from, &to, dir == Direction::Backward)
            .map(|kv| {
                let (k, v) = kv?;
                let pos = keys::trailing_u64(&k).unwrap_or(0);
                Ok((pos, parse_event_id(&v)?))
            })
    }

    /// The relation types `parent` has relations of.
    pub(super) fn relation_types(&self, room: &RoomId, parent: &EventId) -> Result<Vec<String>> {
        if let Some(types) = self.relation_types_cache.get(parent) {
            return Ok(types);
        }
        let generation = self.relation_types_cache.generation();
        let types = self.scan_relation_types(room, parent)?;
        self.relation_types_cache.put(parent, &types, generation);
        Ok(types)
    }

    /// [`RoomsService::relation_types`] read from the index.
    fn scan_relation_types(&self, room: &RoomId, parent: &EventId) -> Result<Vec<String>> {
        let prefix = keys::strs(&[room.as_str(), parent.as_str()]);
        // Every key of the prefix continues with a non-empty UTF-8 type (never 0xFF).
        let mut end = prefix.clone();
        end.push(keys::SEP);
        let mut from = prefix.clone();
        let mut types = Vec::new();
        loop {
            let Some(kv) = self
                .storage
                .trees
                .relations
                .range(&from, &end, false)
                .next()
            else {
                return Ok(types);
            };
            let (k, _) = kv?;
            let rest = k.get(prefix.len()..).unwrap_or_default();
            let Some(len) = rest.iter().position(|b| *b == keys::SEP) else {
                return Ok(types);
            };
            let rel_type = String::from_utf8_lossy(&rest[..len]).into_owned();
            // Past every key of this type: its prefix, then 8 position bytes, then more.
            from = relations_prefix(room, parent, &rel_type)
                .u64(u64::MAX)
                .build();
            from.push(0);
            types.push(rel_type);
        }
    }

    /// A thread's stored record (any root: most events have none).
    pub(super) fn thread_summary(
        &self,
        room: &RoomId,
        root: &EventId,
    ) -> Result<Option<ThreadSummary>> {
        self.storage
            .trees
            .thread_summaries
            .get_json(&summary_key(room, root))
    }

    /// Whether `user` sent a reply to the thread.
    pub(super) fn replied_in_thread(
        &self,
        room: &RoomId,
        root: &EventId,
        user: &UserId,
    ) -> Result<bool> {
        self.storage
            .trees
            .thread_participants
            .contains(&participant_key(room, root, user))
    }

    /// Threads of a room by newest reply, newest first, with that reply's position below
    /// `before` (all when `None`): `(latest_pos, root)`.
    pub(super) fn threads_by_activity<'a>(
        &'a self,
        room: &RoomId,
        before: Option<u64>,
    ) -> impl Iterator<Item = Result<(u64, OwnedEventId)>> + 'a {
        let from = keys::KeyBuilder::new().str(room.as_str()).u64(0).build();
        let to = keys::KeyBuilder::new()
            .str(room.as_str())
            .u64(before.unwrap_or(u64::MAX))
            .build();
        let prefix_len = keys::strs(&[room.as_str()]).len();
        self.storage
            .trees
            .thread_activity
            .range(&from, &to, true)
            .map(move |kv| {
                let (k, _) = kv?;
                let pos = k.get(prefix_len..).and_then(keys::leading_u64).unwrap_or(0);
                let root = k.get(prefix_len + 8..).unwrap_or_default();
                let root = root.strip_suffix(&[keys::SEP]).unwrap_or(root);
                Ok((pos, parse_event_id(root)?))
            })
    }

    /// Indexes every stored event once, when the index marker is missing (data written
    /// before the index existed, or a build cut short): clears the index, then reads the
    /// stream in order. Call at start, before serving.
    pub fn build_relation_index(&self) -> Result<()> {
        let trees = &self.storage.trees;
        if trees.meta.contains(INDEX_MARKER)? {
            return Ok(());
        }
        for tree in self.relation_trees() {
            let mut batch = Batch::new();
            for kv in tree.scan_prefix(&[]) {
                batch.remove(tree, &kv?.0);
            }
            self.storage.commit(batch)?;
        }
        self.relation_types_cache.clear();
        let last = self.applied_pos();
        let (mut after, mut indexed) = (0, 0usize);
        while after < last {
            let events = self.appended_between(after, last, BUILD_BATCH)?;
            let Some((newest, _)) = events.last() else {
                break;
            };
            after = *newest;
            let mut batch = Batch::new();
            let mut writes = IndexWrites::new(trees);
            for (pos, pdu) in &events {
                let content: Value = serde_json::from_str(pdu.content.get())?;
                if let Some((parent, rel_type)) = relation_in(&content) {
                    writes.add(
                        &mut batch,
                        &Relation {
                            room: &pdu.room_id,
                            pos: *pos,
                            event_id: &pdu.event_id,
                            sender: &pdu.sender,
                            parent: &parent,
                            rel_type: &rel_type,
                        },
                    )?;
                    indexed += 1;
                }
            }
            let related = writes.parents().to_vec();
            writes.write(&mut batch)?;
            self.storage.commit(batch)?;
            self.relation_types_cache.forget(&related);
        }
        let mut batch = Batch::new();
        batch.insert(&trees.meta, INDEX_MARKER, &1u64.to_be_bytes());
        self.storage.commit(batch)?;
        self.storage.flush()?;
        tracing::info!(relations = indexed, "relation index built");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
    use serde_json::json;

    use super::*;
    use crate::{
        config::Config,
        rooms::{CreateRoom, MemberProfile, NewEvent},
        services::Services,
    };

    fn user(name: &str) -> OwnedUserId {
        UserId::parse(format!("@{name}:localhost")).unwrap()
    }

    async fn send(
        s: &Services,
        room: &RoomId,
        sender: &UserId,
        kind: &str,
        content: Value,
    ) -> (OwnedEventId, u64) {
        s.rooms
            .send_to(room, sender, NewEvent::message(kind, content))
            .await
            .unwrap()
    }

    async fn reply(
        s: &Services,
        room: &RoomId,
        sender: &UserId,
        root: &EventId,
    ) -> (OwnedEventId, u64) {
        let content = json!({"msgtype": "m.text", "body": "reply",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
        send(s, room, sender, "m.room.message", content).await
    }

    async fn redact(s: &Services, room: &RoomId, sender: &UserId, target: &EventId) {
        let mut event = NewEvent::message("m.room.redaction", json!({}));
        event.redacts = Some(target.to_owned());
        s.rooms.send_to(room, sender, event).await.unwrap();
    }

    async fn public_room(s: &Services, creator: &UserId) -> OwnedRoomId {
        let req = CreateRoom {
            preset: Some("public_chat".into()),
            ..CreateRoom::default()
        };
        s.rooms.create_room(creator, req).await.unwrap()
    }

    fn relations(s: &Services, room: &RoomId, root: &EventId, rel_type: &str) -> Vec<u64> {
        s.rooms
            .relation_range(room, root, rel_type, 0, u64::MAX, Direction::Forward)
            .map(|r| r.unwrap().0)
            .collect()
    }

    fn activity(s: &Services, room: &RoomId) -> Vec<(u64, OwnedEventId)> {
        s.rooms
            .threads_by_activity(room, None)
            .map(Result::unwrap)
            .collect()
    }

    #[tokio::test]
    async fn relations_and_thread_records_follow_replies_and_redactions() {
        let s = Services::in_memory(Config::default()).unwrap();
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let room = public_room(&s, &alice).await;
        s.rooms
            .join(&room, &bob, &MemberProfile::default(), None)
            .await
            .unwrap();
        let (root, _) = send(&s, &room, &alice, "m.room.message", json!({"body": "root"})).await;
        let (r1, p1) = reply(&s, &room, &alice, &root).await;
        let reaction =
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "+1"}});
        let (like, pl) = send(&s, &room, &bob, "m.reaction", reaction).await;
        // Encrypted: the relation is read from the clear `m.relates_to`.
        let encrypted = json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
        let (r2, p2) = send(&s, &room, &bob, "m.room.encrypted", encrypted).await;

        assert_eq!(
            s.rooms.relation_types(&room, &root).unwrap(),
            ["m.annotation", "m.thread"]
        );
        assert_eq!(relations(&s, &room, &root, THREAD), [p1, p2]);
        assert_eq!(relations(&s, &room, &root, "m.annotation"), [pl]);
        let backwards: Vec<u64> = s
            .rooms
            .relation_range(&room, &root, THREAD, p1, p2, Direction::Backward)
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(backwards, [p2], "the range is lo < pos <= hi");
        assert_eq!(
            s.rooms.thread_summary(&room, &root).unwrap(),
            Some(ThreadSummary {
                count: 2,
                latest_pos: p2,
                latest: r2.clone()
            })
        );
        assert!(s.rooms.replied_in_thread(&room, &root, &alice).unwrap());
        assert!(s.rooms.replied_in_thread(&room, &root, &bob).unwrap());
        assert!(!s.rooms.replied_in_thread(&room, &root, &carol).unwrap());
        assert_eq!(activity(&s, &room), [(p2, root.clone())]);
        assert_eq!(s.rooms.thread_summary(&room, &r1).unwrap(), None);

        // The newest reply redacted: the one before is the newest, Bob no longer took part.
        redact(&s, &room, &bob, &r2).await;
        assert_eq!(relations(&s, &room, &root, THREAD), [p1]);
        assert_eq!(
            s.rooms.thread_summary(&room, &root).unwrap(),
            Some(ThreadSummary {
                count: 1,
                latest_pos: p1,
                latest: r1.clone()
            })
        );
        assert!(!s.rooms.replied_in_thread(&room, &root, &bob).unwrap());
        assert_eq!(activity(&s, &room), [(p1, root.clone())]);

        // The last reply redacted: no thread left; the reaction goes the same way.
        redact(&s, &room, &alice, &r1).await;
        assert_eq!(s.rooms.thread_summary(&room, &root).unwrap(), None);
        assert!(activity(&s, &room).is_empty());
        assert!(!s.rooms.replied_in_thread(&room, &root, &alice).unwrap());
        redact(&s, &room, &bob, &like).await;
        assert!(s.rooms.relation_types(&room, &root).unwrap().is_empty());
    }

    #[tokio::test]
    async fn cached_relation_types_follow_new_and_redacted_relations() {
        let s = Services::in_memory(Config::default()).unwrap();
        let alice = user("alice");
        let room = public_room(&s, &alice).await;
        let (root, _) = send(&s, &room, &alice, "m.room.message", json!({"body": "root"})).await;
        let types = |s: &Services| s.rooms.relation_types(&room, &root).unwrap();
        // Read twice: the second answer comes from the cache.
        assert!(types(&s).is_empty());
        assert!(types(&s).is_empty());
        let (reply_id, _) = reply(&s, &room, &alice, &root).await;
        assert_eq!(types(&s), vec!["m.thread"]);
        let edit = json!({"body": "* root", "m.new_content": {"body": "root"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": root}});
        send(&s, &room, &alice, "m.room.message", edit).await;
        let mut now = types(&s);
        now.sort();
        assert_eq!(now, vec!["m.replace", "m.thread"]);
        redact(&s, &room, &alice, &reply_id).await;
        assert_eq!(types(&s), vec!["m.replace"]);
        // What the cache says is what the index says.
        assert_eq!(
            s.rooms.scan_relation_types(&room, &root).unwrap(),
            types(&s)
        );
    }

    #[tokio::test]
    async fn a_redaction_that_is_itself_a_reply_keeps_the_count() {
        let s = Services::in_memory(Config::default()).unwrap();
        let alice = user("alice");
        let room = public_room(&s, &alice).await;
        let (root, _) = send(&s, &room, &alice, "m.room.message", json!({"body": "root"})).await;
        let (r1, _) = reply(&s, &room, &alice, &root).await;
        // One batch takes a reply out and puts another in.
        let mut event = NewEvent::message(
            "m.room.redaction",
            json!({"m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        );
        event.redacts = Some(r1);
        let (id, pos) = s.rooms.send_to(&room, &alice, event).await.unwrap();
        assert_eq!(
            s.rooms.thread_summary(&room, &root).unwrap(),
            Some(ThreadSummary {
                count: 1,
                latest_pos: pos,
                latest: id
            })
        );
        assert_eq!(activity(&s, &room), [(pos, root)]);
    }

    #[tokio::test]
    async fn a_purge_takes_the_rooms_index_and_keeps_other_rooms() {
        let s = Services::in_memory(Config::default()).unwrap();
        let alice = user("alice");
        let gone = public_room(&s, &alice).await;
        let kept = public_room(&s, &alice).await;
        for room in [&gone, &kept] {
            let (root, _) = send(&s, room, &alice, "m.room.message", json!({"body": "root"})).await;
            reply(&s, room, &alice, &root).await;
        }
        s.rooms
            .purge_room(&gone, std::slice::from_ref(&alice))
            .await
            .unwrap();
        for tree in s.rooms.relation_trees() {
            let rooms: Vec<String> = tree
                .scan_prefix(&[])
                .map(|kv| keys::split_strs(&kv.unwrap().0)[0].to_owned())
                .collect();
            assert_eq!(rooms, [kept.as_str()]);
        }
    }

    #[tokio::test]
    async fn the_index_survives_a_restart_and_is_built_for_older_data() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        let alice = user("alice");
        let (room, root, expected) = {
            let s = Services::open(config.clone()).unwrap();
            let room = public_room(&s, &alice).await;
            let (root, _) =
                send(&s, &room, &alice, "m.room.message", json!({"body": "root"})).await;
            let (r1, _) = reply(&s, &room, &alice, &root).await;
            reply(&s, &room, &alice, &root).await;
            redact(&s, &room, &alice, &r1).await;
            let edit = json!({"body": "* x", "m.new_content": {"body": "x"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": root}});
            send(&s, &room, &alice, "m.room.message", edit).await;
            s.storage().flush().unwrap();
            let expected = dump(&s);
            assert_eq!(
                s.rooms.thread_summary(&room, &root).unwrap().unwrap().count,
                1
            );
            (room, root, expected)
        };
        // A restart keeps the index as it was.
        let s = Services::reopen(config.clone()).await.unwrap();
        assert_eq!(dump(&s), expected);
        // Data from before the index (no marker, no entries) is indexed at start.
        for tree in s.rooms.relation_trees() {
            for kv in tree.scan_prefix(&[]) {
                tree.remove(&kv.unwrap().0).unwrap();
            }
        }
        s.storage().trees.meta.remove(INDEX_MARKER).unwrap();
        s.storage().flush().unwrap();
        drop(s);
        let s = Services::reopen(config).await.unwrap();
        assert_eq!(dump(&s), expected);
        assert_eq!(
            s.rooms.relation_types(&room, &root).unwrap(),
            ["m.replace", "m.thread"]
        );
    }

    /// Every entry of the index's trees.
    fn dump(s: &Services) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        s.rooms
            .relation_trees()
            .iter()
            .map(|tree| tree.scan_prefix(&[]).map(Result::unwrap).collect())
            .collect()
    }
}
