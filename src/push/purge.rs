//! Purging a room: the push domain's part — its notification records (`event_push`, and
//! the per-recipient records of older data dirs in `push_actions`) and the cached unread
//! counts and display names.

use ruma::{OwnedUserId, RoomId};

use super::PushService;
use crate::{
    storage::{keys, Batch},
    Result,
};

/// Keys removed per committed batch, at most.
const PURGE_BATCH: usize = 512;

impl PushService {
    /// Drops every push record and cached count of the room; `users` are those who ever
    /// had a membership in it. Idempotent.
    pub fn purge_room(&self, room_id: &RoomId, users: &[OwnedUserId]) -> Result<()> {
        let trees = &self.storage.trees;
        let mut batch = Batch::new();
        let mut count = 0;
        let mut prefixes = vec![(&trees.event_push, keys::strs(&[room_id.as_str()]))];
        for user in users {
            prefixes.push((
                &trees.push_actions,
                keys::strs(&[user.as_str(), room_id.as_str()]),
            ));
        }
        for (tree, prefix) in prefixes {
            for kv in tree.scan_prefix(&prefix) {
                batch.remove(tree, &kv?.0);
                count += 1;
                if count >= PURGE_BATCH {
                    self.storage.commit(std::mem::take(&mut batch))?;
                    count = 0;
                }
            }
        }
        self.storage.commit(batch)?;
        self.unread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room_id);
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rooms
            .remove(room_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ruma::UserId;

    use crate::{config::Config, rooms::CreateRoom, services::Services, storage::keys};

    #[tokio::test]
    async fn purge_drops_the_rooms_push_records_only() {
        let s = Services::in_memory(Config::default()).unwrap();
        let alice = UserId::parse("@alice:localhost").unwrap();
        let room = s
            .rooms
            .create_room(&alice, CreateRoom::default())
            .await
            .unwrap();
        let other = s
            .rooms
            .create_room(&alice, CreateRoom::default())
            .await
            .unwrap();
        let t = &s.storage().trees;
        for r in [&room, &other] {
            t.event_push
                .insert(
                    &keys::KeyBuilder::new().str(r.as_str()).u64(1).build(),
                    b"{}",
                )
                .unwrap();
            t.push_actions
                .insert(
                    &keys::KeyBuilder::new()
                        .str(alice.as_str())
                        .str(r.as_str())
                        .u64(1)
                        .build(),
                    b"{}",
                )
                .unwrap();
        }
        s.push
            .purge_room(&room, std::slice::from_ref(&alice))
            .unwrap();
        let count = |tree: &crate::storage::Tree, r: &ruma::RoomId| {
            tree.scan_prefix(&[])
                .filter(|kv| {
                    let k = &kv.as_ref().unwrap().0;
                    k.windows(r.as_str().len()).any(|w| w == r.as_bytes())
                })
                .count()
        };
        assert_eq!(count(&t.event_push, &room), 0);
        assert_eq!(count(&t.push_actions, &room), 0);
        assert_eq!(count(&t.event_push, &other), 1);
        assert_eq!(count(&t.push_actions, &other), 1);
    }
}
