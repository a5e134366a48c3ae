//! Purging a room: the rooms domain's part (events, stream entries, timeline, state,
//! memberships, aliases, the directory entry, receipts, typing, reports, transactions, the
//! relation index and thread records, and the in-memory caches), and taking every member out of a room before it goes.
//!
//! The other domains drop their own parts (`push`, `users` account data, `rtc` delayed
//! events); `crate::purge` asks each in turn. Deletion runs in batches of at most
//! [`PURGE_BATCH`] keys; the room record, its aliases and its directory entry go in the
//! first batch, so the room answers 404 at once, and every later batch removes an index
//! entry together with what it points at, so a purge cut short by a crash is finished by
//! running it again.

use std::collections::HashSet;

use ruma::{OwnedEventId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Value};

use super::{
    append::{parse_event_id, NewEvent},
    kinds::ServerAction,
    members::Membership,
    RoomGuard, RoomsService,
};
use crate::{
    storage::{keys, Batch, Storage},
    Result,
};

/// Keys removed per committed batch, at most.
const PURGE_BATCH: usize = 512;

/// `meta` key: the newest stream position a purge removed, so that the stream position
/// never goes back when the newest events belonged to a purged room.
const STREAM_FLOOR_KEY: &[u8] = b"purged_stream_pos";

/// The newest stream position a purge removed (0 when none), for [`RoomsService::new`].
pub(super) fn stream_floor(storage: &Storage) -> Result<u64> {
    Ok(storage
        .trees
        .meta
        .get(STREAM_FLOOR_KEY)?
        .and_then(|v| keys::leading_u64(&v))
        .unwrap_or(0))
}

/// Collects removals and commits them every [`PURGE_BATCH`] keys.
struct Chunks<'a> {
    storage: &'a Storage,
    batch: Batch,
    count: usize,
}

impl<'a> Chunks<'a> {
    fn new(storage: &'a Storage) -> Chunks<'a> {
        Chunks {
            storage,
            batch: Batch::new(),
            count: 0,
        }
    }

    fn remove(&mut self, tree: &crate::storage::Tree, key: &[u8]) {
        self.batch.remove(tree, key);
        self.count += 1;
    }

    /// Commits when the batch is full (call between groups of related removals).
    fn maybe_commit(&mut self) -> Result<()> {
        if self.count >= PURGE_BATCH {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        self.count = 0;
        self.storage.commit(std::mem::take(&mut self.batch))
    }
}

impl RoomsService {
    /// Every user with a membership in the room's history (joined, invited, left, …):
    /// whose per-user records (room lists, push records, room account data, transactions)
    /// may mention the room.
    pub fn purge_subjects(&self, room_id: &RoomId) -> Result<Vec<OwnedUserId>> {
        let prefix = keys::strs(&[room_id.as_str(), "m.room.member"]);
        let mut users = HashSet::new();
        for kv in self.storage.trees.room_state_history.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let parts = keys::split_strs(&k[prefix.len()..]);
            if let Some(user) = parts.first().and_then(|u| UserId::parse(*u).ok()) {
                users.insert(user);
            }
        }
        let mut users: Vec<OwnedUserId> = users.into_iter().collect();
        users.sort();
        Ok(users)
    }

    /// Takes everyone out of the room before it is deleted or dissolved, so that each
    /// member's and invitee's clients see it move to `leave` (`/sync`, sliding sync):
    ///
    /// - with a `remover` (the owner deleting the room, joined, with the kick power its
    ///   kind guarantees): every other joined, invited or knocking user is kicked (a
    ///   rescinded invite for invitees), then the remover leaves;
    /// - without one (a dissolving group, or an administrator's delete, where no member
    ///   asked): each user leaves by themselves — for an invitee that is the rejection
    ///   of the invite. The server writes these departures on the users' behalf, as it
    ///   does for a deactivated account: every local user's events are signed by this
    ///   server, the auth rules always allow a user's own leave, and nobody else in the
    ///   room could sign a kick (a dissolving group has no joined member left).
    ///
    /// Every departure is marked [`ServerAction::Departure`] so that neither the owner's
    /// protection nor the last-moderator rule holds it back. Returns the users taken
    /// out; waits until their departures are visible.
    pub async fn remove_everyone(
        &self,
        room_id: &RoomId,
        remover: Option<&UserId>,
        reason: &str,
    ) -> Result<Vec<OwnedUserId>> {
        let mut guard = self.lock(room_id).await;
        self.room(room_id)?;
        guard.set_server_action(ServerAction::Departure);
        let members = self.members(room_id)?;
        let remover = remover.filter(|r| members.get(r) == Some(Membership::Join));
        let mut removed = Vec::new();
        let mut last = 0;
        for (user, m) in members.all() {
            if Some(user) == remover
                || !matches!(m, Membership::Join | Membership::Invite | Membership::Knock)
            {
                continue;
            }
            let sender = remover.unwrap_or(user);
            let content = json!({ "membership": "leave", "reason": reason });
            let event = NewEvent::state("m.room.member", user.as_str(), content);
            let (_, pos) = self.append(&guard, sender, event)?;
            last = pos;
            removed.push(user.to_owned());
        }
        if let Some(remover) = remover {
            let content = json!({ "membership": "leave", "reason": reason });
            let event = NewEvent::state("m.room.member", remover.as_str(), content);
            let (_, pos) = self.append(&guard, remover, event)?;
            last = pos;
            removed.push(remover.to_owned());
        }
        drop(guard);
        if last > 0 {
            self.wait_visible(last).await?;
        }
        Ok(removed)
    }

    /// Removes the rooms domain's part of a room, under its lock; `users` are the
    /// [`purge_subjects`](Self::purge_subjects) (read before a first attempt, as the
    /// membership history they come from is purged too). Idempotent.
    pub async fn purge_room(&self, room_id: &RoomId, users: &[OwnedUserId]) -> Result<()> {
        let guard = self.lock(room_id).await;
        self.purge_locked(&guard, users)
    }

    pub(super) fn purge_locked(&self, guard: &RoomGuard, users: &[OwnedUserId]) -> Result<()> {
        let room_id = guard.room_id();
        let trees = &self.storage.trees;
        let prefix = keys::strs(&[room_id.as_str()]);

        // First: the room, its aliases, its directory entry and the users' room lists
        // (the room answers 404 and leaves every sync from here on), and the stream
        // floor.
        let mut first = Batch::new();
        first.remove(&trees.rooms, room_id.as_bytes());
        first.remove(&trees.public_rooms, room_id.as_bytes());
        first.remove(&trees.blocked_rooms, room_id.as_bytes());
        for alias in self.room_aliases(room_id)? {
            first.remove(&trees.aliases, alias.as_bytes());
            first.remove(
                &trees.room_aliases,
                &keys::strs(&[room_id.as_str(), alias.as_str()]),
            );
        }
        for user in users {
            let key = keys::strs(&[user.as_str(), room_id.as_str()]);
            first.remove(&trees.user_rooms, &key);
            first.remove(&trees.forgotten, &key);
            first.remove(&trees.history_wipes, &key);
        }
        let applied = *self.stream.lock().unwrap_or_else(|e| e.into_inner());
        if applied > stream_floor(&self.storage)? {
            first.insert(&trees.meta, STREAM_FLOOR_KEY, &applied.to_be_bytes());
        }
        self.storage.commit(first)?;
        self.members.forget_user_rooms(users.iter().map(|u| &**u));
        self.members.forget(room_id);

        let mut chunks = Chunks::new(&self.storage);
        // Transactions and reports name events or the room in their values: removed
        // while the timeline still lists the room's events.
        let mut events: HashSet<OwnedEventId> = HashSet::new();
        for kv in trees.room_timeline.scan_prefix(&prefix) {
            if let Ok(id) = parse_event_id(&kv?.1) {
                events.insert(id);
            }
        }
        for user in users {
            for kv in trees.txns.scan_prefix(&keys::strs(&[user.as_str()])) {
                let (k, v) = kv?;
                if parse_event_id(&v).is_ok_and(|id| events.contains(&id)) {
                    chunks.remove(&trees.txns, &k);
                }
            }
            chunks.maybe_commit()?;
        }
        for kv in trees.event_reports.scan_prefix(&[]) {
            let (k, v) = kv?;
            let report: Value = serde_json::from_slice(&v).unwrap_or(Value::Null);
            if report["room_id"].as_str() == Some(room_id.as_str()) {
                chunks.remove(&trees.event_reports, &k);
            }
        }
        chunks.commit()?;

        // The events: each timeline entry goes with its event, stream entry and
        // transaction record.
        for kv in trees.room_timeline.scan_prefix(&prefix) {
            let (k, v) = kv?;
            chunks.remove(&trees.pdus, &v);
            chunks.remove(&trees.event_txns, &v);
            if let Some(pos) = keys::trailing_u64(&k) {
                chunks.remove(&trees.stream, &pos.to_be_bytes());
            }
            chunks.remove(&trees.room_timeline, &k);
            if let Ok(id) = parse_event_id(&v) {
                self.invalidate_pdu(&id);
            }
            chunks.maybe_commit()?;
        }
        let rooms_trees = [
            &trees.room_state,
            &trees.room_state_history,
            &trees.receipts,
            &trees.receipts_log,
            &trees.room_aliases,
        ];
        for tree in rooms_trees.into_iter().chain(self.relation_trees()) {
            for kv in tree.scan_prefix(&prefix) {
                chunks.remove(tree, &kv?.0);
                chunks.maybe_commit()?;
            }
        }
        chunks.commit()?;
        self.relation_types_cache.clear();

        self.tips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room_id);
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room_id);
        self.typing.forget(room_id);
        self.deliveries.forget(room_id);
        self.members.forget(room_id);
        tracing::info!(room = %room_id, "room purged from the rooms' trees");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        rooms::{CreateRoom, MemberProfile},
        services::Services,
    };

    fn user(name: &str) -> OwnedUserId {
        UserId::parse(format!("@{name}:localhost")).unwrap()
    }

    /// Keys of the rooms' trees that mention `room` in their key or value.
    fn mentions(s: &Services, room: &RoomId) -> usize {
        let t = &s.storage().trees;
        let needle = room.as_str().as_bytes();
        [
            &t.pdus,
            &t.stream,
            &t.room_timeline,
            &t.room_state,
            &t.room_state_history,
            &t.rooms,
            &t.user_rooms,
            &t.aliases,
            &t.room_aliases,
            &t.public_rooms,
            &t.receipts,
            &t.receipts_log,
            &t.relations,
            &t.thread_summaries,
            &t.thread_participants,
            &t.thread_activity,
        ]
        .iter()
        .map(|tree| {
            tree.scan_prefix(&[])
                .filter(|kv| {
                    let (k, v) = kv.as_ref().unwrap();
                    k.windows(needle.len()).any(|w| w == needle)
                        || v.windows(needle.len()).any(|w| w == needle)
                })
                .count()
        })
        .sum()
    }

    #[tokio::test]
    async fn purge_removes_the_rooms_part_and_keeps_other_rooms() {
        let s = Services::in_memory(Config::default()).unwrap();
        let (alice, bob) = (user("alice"), user("bob"));
        let alias = ruma::OwnedRoomAliasId::try_from("#gone:localhost").unwrap();
        let req = CreateRoom {
            room_alias_name: Some("gone".into()),
            visibility_public: true,
            ..CreateRoom::default()
        };
        let room = s.rooms.create_room(&alice, req).await.unwrap();
        let other = s
            .rooms
            .create_room(&alice, CreateRoom::default())
            .await
            .unwrap();
        s.rooms
            .join(&room, &bob, &MemberProfile::default(), None)
            .await
            .unwrap();
        assert!(mentions(&s, &room) > 0);
        let before_other = mentions(&s, &other);
        let last = s.rooms.applied_pos();

        let users = s.rooms.purge_subjects(&room).unwrap();
        assert_eq!(users, vec![alice.clone(), bob.clone()]);
        s.rooms.purge_room(&room, &users).await.unwrap();

        assert_eq!(mentions(&s, &room), 0);
        assert_eq!(mentions(&s, &other), before_other);
        assert_eq!(s.rooms.room(&room).unwrap_err().errcode(), "M_NOT_FOUND");
        assert_eq!(s.rooms.resolve_alias(&alias).unwrap(), None);
        assert_eq!(
            s.rooms.joined_rooms(&bob).unwrap(),
            Vec::<ruma::OwnedRoomId>::new()
        );
        assert_eq!(stream_floor(s.storage()).unwrap(), last);
        // Purging again is harmless.
        s.rooms.purge_room(&room, &users).await.unwrap();
    }

    #[tokio::test]
    async fn remove_everyone_kicks_then_the_remover_leaves() {
        let s = Services::in_memory(Config::default()).unwrap();
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let req = CreateRoom {
            preset: Some("public_chat".into()),
            ..CreateRoom::default()
        };
        let room = s.rooms.create_room(&alice, req).await.unwrap();
        s.rooms
            .join(&room, &bob, &MemberProfile::default(), None)
            .await
            .unwrap();
        s.rooms
            .invite(&room, &alice, &carol, None, false, None)
            .await
            .unwrap();
        let removed = s
            .rooms
            .remove_everyone(&room, Some(&alice), "deleted")
            .await
            .unwrap();
        assert_eq!(removed.last(), Some(&alice));
        assert_eq!(removed.len(), 3);
        let members = s.rooms.members(&room).unwrap();
        assert_eq!(members.count(Membership::Join), 0);
        assert_eq!(members.count(Membership::Invite), 0);
        let kick = s
            .rooms
            .state_event_str(&room, "m.room.member", bob.as_str())
            .unwrap()
            .unwrap();
        assert_eq!(kick.sender, alice);
    }
}
