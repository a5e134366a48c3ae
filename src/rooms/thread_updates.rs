//! Thread updates across a user's joined rooms (MSC4360): the threads whose newest reply
//! falls in a window of timeline positions, newest first, one entry per thread — what the
//! sliding-sync `threads` extension and the `/thread_updates` companion endpoint serve.
//!
//! Read from the thread records (`relation_index.rs`): per joined room one range walk over
//! its threads by newest reply, stopping at the window's start; per thread kept, a point
//! lookup for its root and a walk over its replies in the window (to the second visible
//! one, or further only while they were all in the same sync response).

use std::collections::HashSet;

use ruma::{OwnedEventId, OwnedRoomId, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::{
    read::Direction, relation_index::THREAD, visibility::Viewer, Membership, RoomsService, Token,
};
use crate::Result;

/// The most thread updates one response carries (and the default).
pub const MAX_THREAD_UPDATES: usize = 100;

/// One thread with news.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadUpdate {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The thread root.
    pub root: OwnedEventId,
    /// Timeline position of the thread's newest reply.
    pub latest_pos: u64,
    /// When the window holds more than that one reply: a `/relations` token (`dir=b`)
    /// starting at the one before it.
    pub prev_batch: Option<Token>,
}

/// A page of thread updates, newest first.
#[derive(Debug, Default)]
pub struct ThreadUpdates {
    /// The updates.
    pub updates: Vec<ThreadUpdate>,
    /// When the limit cut the list: where older updates continue (`from` of
    /// `/thread_updates`, inclusive).
    pub older_from: Option<Token>,
}

/// The window and what to leave out.
pub struct UpdatesQuery<'a> {
    /// Only replies after this position...
    pub after: u64,
    /// ...up to this one (inclusive).
    pub until: u64,
    /// At most this many threads (clamped to 1..=[`MAX_THREAD_UPDATES`]).
    pub limit: usize,
    /// Events the client gets in the same response: a thread whose replies in the window
    /// are all among them is left out.
    pub served: Option<&'a HashSet<OwnedEventId>>,
}

impl RoomsService {
    /// The threads of the rooms `user` is joined to with replies in the query's window
    /// that the user may see (the root and the newest reply), newest reply first.
    pub fn thread_updates(&self, user: &UserId, query: &UpdatesQuery<'_>) -> Result<ThreadUpdates> {
        let limit = query.limit.clamp(1, MAX_THREAD_UPDATES);
        let mut found: Vec<ThreadUpdate> = Vec::new();
        if query.after >= query.until {
            return Ok(ThreadUpdates::default());
        }
        for (room_id, membership, _) in self.user_rooms(user)?.iter() {
            if *membership != Membership::Join {
                continue;
            }
            let viewer = self.viewer(room_id, user, self.reading_limit(room_id, user)?)?;
            // One more than a page per room tells whether the merged list goes on.
            let mut taken = 0;
            let before = query.until.saturating_add(1);
            for entry in self.threads_by_activity(room_id, Some(before)) {
                let (pos, root) = entry?;
                if pos <= query.after {
                    break;
                }
                if let Some(update) = self.thread_update(room_id, &root, pos, query, &viewer)? {
                    found.push(update);
                    taken += 1;
                    if taken > limit {
                        break;
                    }
                }
            }
        }
        found.sort_by(|a, b| {
            b.latest_pos
                .cmp(&a.latest_pos)
                .then_with(|| a.room_id.cmp(&b.room_id))
        });
        let older_from = found.get(limit).map(|next| Token(next.latest_pos));
        found.truncate(limit);
        Ok(ThreadUpdates {
            updates: found,
            older_from,
        })
    }

    /// Updates as the extension and the endpoint carry them: `{roomId: {rootId:
    /// {thread_root?, prev_batch?}}}`, with `thread_root` (client format, bundled
    /// aggregations included) when `include_roots`.
    pub fn thread_updates_json(
        &self,
        user: &UserId,
        updates: &[ThreadUpdate],
        include_roots: bool,
    ) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        for update in updates {
            let mut fields = Map::new();
            if include_roots {
                let Some(root) = self.get_pdu(&update.root)? else {
                    continue;
                };
                let mut served = [root.to_client_event()];
                self.add_unsigned(&update.room_id, user, &mut served)?;
                let [served] = served;
                fields.insert("thread_root".into(), served);
            }
            if let Some(prev) = update.prev_batch {
                fields.insert("prev_batch".into(), json!(prev.to_string()));
            }
            let room = out
                .entry(update.room_id.to_string())
                .or_insert_with(|| json!({}));
            room[update.root.as_str()] = Value::Object(fields);
        }
        Ok(out)
    }

    /// One thread's update, when the viewer may see its root and newest reply and the
    /// client does not get all of its replies in the window anyway.
    fn thread_update(
        &self,
        room_id: &RoomId,
        root: &OwnedEventId,
        latest_pos: u64,
        query: &UpdatesQuery<'_>,
        viewer: &Viewer,
    ) -> Result<Option<ThreadUpdate>> {
        if !viewer.sees(latest_pos) {
            return Ok(None);
        }
        match self.event_pos(root)? {
            Some(root_pos) if viewer.sees(root_pos) => {}
            _ => return Ok(None),
        }
        let mut visible = 0;
        let mut prev_batch = None;
        let mut all_served = true;
        let replies = self.relation_range(
            room_id,
            root,
            THREAD,
            query.after,
            latest_pos,
            Direction::Backward,
        );
        for entry in replies {
            let (pos, id) = entry?;
            if !viewer.sees(pos) {
                continue;
            }
            visible += 1;
            if visible == 2 {
                prev_batch = Some(Token(pos));
            }
            all_served &= query.served.is_some_and(|served| served.contains(&id));
            if visible >= 2 && !all_served {
                break;
            }
        }
        if query.served.is_some() && all_served {
            return Ok(None);
        }
        Ok(Some(ThreadUpdate {
            room_id: room_id.to_owned(),
            root: root.clone(),
            latest_pos,
            prev_batch,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use ruma::{OwnedEventId, UserId};
    use serde_json::json;

    use super::*;
    use crate::rooms::{test_support::room_with_message, NewEvent};

    async fn reply(
        s: &crate::services::Services,
        room: &RoomId,
        sender: &UserId,
        root: &OwnedEventId,
    ) -> (OwnedEventId, u64) {
        let content = json!({"msgtype": "m.text", "body": "r",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
        s.rooms
            .send_to(room, sender, NewEvent::message("m.room.message", content))
            .await
            .unwrap()
    }

    fn query(after: u64, until: u64, limit: usize) -> UpdatesQuery<'static> {
        UpdatesQuery {
            after,
            until,
            limit,
            served: None,
        }
    }

    #[tokio::test]
    async fn one_entry_per_thread_newest_first_within_the_window() {
        let (s, alice, room, first_root) = room_with_message().await;
        let (_, start) = reply(&s, &room, &alice, &first_root).await;
        let (second_root, _) = s
            .rooms
            .send_to(
                &room,
                &alice,
                NewEvent::message("m.room.message", json!({"msgtype": "m.text", "body": "2"})),
            )
            .await
            .unwrap();
        let (older, older_pos) = reply(&s, &room, &alice, &second_root).await;
        let (newest, now) = reply(&s, &room, &alice, &second_root).await;

        // Everything: both threads, the newer first; the second thread had two replies.
        let all = s.rooms.thread_updates(&alice, &query(0, now, 10)).unwrap();
        let roots: Vec<&OwnedEventId> = all.updates.iter().map(|u| &u.root).collect();
        assert_eq!(roots, [&second_root, &first_root]);
        assert_eq!(all.updates[0].latest_pos, now);
        assert_eq!(all.updates[0].prev_batch, Some(Token(older_pos)));
        assert_eq!(all.updates[1].prev_batch, None);
        assert!(all.older_from.is_none());

        // After the first thread's reply: only the second thread.
        let later = s
            .rooms
            .thread_updates(&alice, &query(start, now, 10))
            .unwrap();
        assert_eq!(later.updates.len(), 1);
        // After its older reply: one new reply, no `prev_batch`.
        let last = s
            .rooms
            .thread_updates(&alice, &query(older_pos, now, 10))
            .unwrap();
        assert_eq!(last.updates[0].prev_batch, None);

        // A limit of one cuts the list where the next update is.
        let cut = s.rooms.thread_updates(&alice, &query(0, now, 1)).unwrap();
        assert_eq!(cut.updates.len(), 1);
        assert_eq!(cut.older_from, Some(Token(start)));

        // Replies the response carries anyway leave their thread out; if one of them is
        // missing, the thread stays.
        let served: HashSet<OwnedEventId> = [older.clone(), newest.clone()].into();
        let skipped = s
            .rooms
            .thread_updates(
                &alice,
                &UpdatesQuery {
                    served: Some(&served),
                    ..query(start, now, 10)
                },
            )
            .unwrap();
        assert!(skipped.updates.is_empty());
        let partly: HashSet<OwnedEventId> = [newest].into();
        let kept = s
            .rooms
            .thread_updates(
                &alice,
                &UpdatesQuery {
                    served: Some(&partly),
                    ..query(start, now, 10)
                },
            )
            .unwrap();
        assert_eq!(kept.updates.len(), 1);

        // Someone not in the room gets nothing.
        let bob = UserId::parse("@bob:localhost").unwrap();
        assert!(s
            .rooms
            .thread_updates(&bob, &query(0, now, 10))
            .unwrap()
            .updates
            .is_empty());
    }
}
