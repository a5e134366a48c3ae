//! `/notifications`: the notifying events of a user's rooms, newest first.

use std::collections::HashMap;

use ruma::{OwnedRoomId, UserId};

use super::{
    store::{record_for, record_key, PushRecord},
    PushService,
};
use crate::{storage::keys, Result};

/// A page of `/notifications`.
pub struct NotificationsPage {
    /// `(room_id, pos, record, read)` newest first.
    pub items: Vec<(String, u64, PushRecord, bool)>,
    /// Token for the next page.
    pub next: Option<u64>,
}

impl PushService {
    /// `/notifications`: newest first, before position `from`, at most `limit`. The
    /// newest records of each of the user's rooms, merged.
    pub fn notifications(
        &self,
        user: &UserId,
        from: Option<u64>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<NotificationsPage> {
        let before = from.unwrap_or(u64::MAX);
        let mut found: Vec<(u64, OwnedRoomId, PushRecord)> = Vec::new();
        for (room_id, _, _) in self.rooms.user_rooms(user)?.iter() {
            // Nothing the user wiped is listed.
            let lo = record_key(
                room_id,
                self.rooms.wiped_until(room_id, user)?.saturating_add(1),
            );
            let hi = record_key(room_id, before);
            let mut taken = 0;
            for kv in self.storage.trees.event_push.range(&lo, &hi, true) {
                let (k, v) = kv?;
                let Some(record) = record_for(&v, user) else {
                    continue;
                };
                if only_highlight && !record.highlight {
                    continue;
                }
                found.push((keys::trailing_u64(&k).unwrap_or(0), room_id.clone(), record));
                taken += 1;
                if taken > limit {
                    break;
                }
            }
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        let next = (found.len() > limit).then(|| found[limit - 1].0);
        found.truncate(limit);
        let mut read_pos: HashMap<OwnedRoomId, u64> = HashMap::new();
        let mut items = Vec::with_capacity(found.len());
        for (pos, room_id, record) in found {
            let read = match read_pos.get(&room_id) {
                Some(p) => *p,
                None => {
                    let p = self.rooms.own_read_pos(&room_id, user)?.unwrap_or(0);
                    read_pos.insert(room_id.clone(), p);
                    p
                }
            };
            items.push((room_id.to_string(), pos, record, pos <= read));
        }
        Ok(NotificationsPage { items, next })
    }
}
