//! Threads (spec v1.4, "Threading"): the `m.thread` bundled aggregation on thread roots
//! served to a user (`unsigned["m.relations"]["m.thread"]`: the newest reply the user may
//! see, the number of replies, and whether the user sent the root or a reply), and the
//! list of a room's threads, newest activity first (`/threads`).
//!
//! Both read the thread records kept with the relation index (`relation_index.rs`):
//! serving an event costs the scan of its relation types that `add_unsigned` makes for
//! every bundle; a thread root adds its summary and a participation lookup,
//! and only when the user may not see the newest reply (they left, or wiped their
//! history) a walk over the thread's replies for the newest they may see, counting those.
//! Otherwise `count` is every reply, as other servers report it.

use std::sync::Arc;

use ruma::{EventId, RoomId, UserId};
use serde_json::{json, Value};

use super::{
    aggregations::bundle,
    read::Direction,
    relation_index::{relation_in, ThreadSummary, THREAD},
    visibility::Viewer,
    RoomsService, Token,
};
use crate::{events::Pdu, Result};

/// One page of `/threads`.
pub struct ThreadsPage {
    /// Thread roots, newest activity first.
    pub chunk: Vec<Arc<Pdu>>,
    /// Where the next page starts, when there is one.
    pub next_batch: Option<Token>,
}

/// A thread as one user sees it.
struct UserThread {
    latest: Arc<Pdu>,
    count: u64,
    participated: bool,
}

impl RoomsService {
    /// The timeline position of `event` when it is the thread root `root` itself or a
    /// reply in its thread, as `user` may see it; `None` otherwise (a thread
    /// subscription's cause must be one of these).
    pub fn thread_event_pos(
        &self,
        room_id: &RoomId,
        user: &UserId,
        root: &EventId,
        event: &EventId,
    ) -> Result<Option<u64>> {
        let pdu = match self.visible_event(room_id, user, event) {
            Ok(pdu) => pdu,
            Err(e) if e.errcode() == "M_NOT_FOUND" => return Ok(None),
            Err(e) => return Err(e),
        };
        if event != root {
            let content: Value = serde_json::from_str(pdu.content.get())?;
            match relation_in(&content) {
                Some((parent, rel_type)) if parent == root && rel_type == THREAD => {}
                _ => return Ok(None),
            }
        }
        self.event_pos(event)
    }

    /// Adds what `unsigned` carries for the reader to client-format events of `room_id`
    /// served to `user`: `membership` ([`RoomsService::add_memberships`]) and the bundled
    /// aggregations: on thread roots the `m.thread` summary, on edited events the newest
    /// valid edit (`m.replace`), on referenced events their references (`m.reference`,
    /// `aggregations.rs`). Every read path calls it on what it serves.
    pub fn add_unsigned(
        &self,
        room_id: &RoomId,
        user: &UserId,
        events: &mut [Value],
    ) -> Result<()> {
        self.add_memberships(room_id, user, events)?;
        // One scan of the relation index per event says which bundles it may get; most
        // events have no relations and cost nothing more.
        let mut viewer: Option<Viewer> = None;
        for event in events {
            let Some(id) = event["event_id"]
                .as_str()
                .and_then(|id| EventId::parse(id).ok())
            else {
                continue;
            };
            let types = self.relation_types(room_id, &id)?;
            if types.is_empty() {
                continue;
            }
            let viewer = match viewer {
                Some(ref v) => v,
                None => {
                    viewer.insert(self.viewer(room_id, user, self.reading_limit(room_id, user)?)?)
                }
            };
            if types.iter().any(|t| t == THREAD) {
                self.bundle_thread(room_id, user, event, &id, viewer)?;
            }
            self.bundle_edits_and_references(room_id, user, event, &id, &types, viewer)?;
        }
        Ok(())
    }

    /// Adds `unsigned["m.relations"]["m.thread"]` to the thread root `event` (`root`).
    fn bundle_thread(
        &self,
        room_id: &RoomId,
        user: &UserId,
        event: &mut Value,
        root: &EventId,
        viewer: &Viewer,
    ) -> Result<()> {
        let Some(summary) = self.thread_summary(room_id, root)? else {
            return Ok(());
        };
        let sent_root = event["sender"].as_str() == Some(user.as_str());
        let Some(thread) = self.user_thread(room_id, user, root, sent_root, &summary, viewer)?
        else {
            return Ok(());
        };
        let mut latest = self.served_like(room_id, user, event, &thread.latest)?;
        // The newest reply carries its own newest edit (as Synapse bundles it).
        let types = self.relation_types(room_id, &thread.latest.event_id)?;
        self.bundle_edits_and_references(
            room_id,
            user,
            &mut latest,
            &thread.latest.event_id,
            &types,
            viewer,
        )?;
        bundle(
            event,
            THREAD,
            json!({
                "latest_event": latest,
                "count": thread.count,
                "current_user_participated": thread.participated,
            }),
        );
        Ok(())
    }

    /// The newest position `user` may read in the room, 0 when they may read none.
    pub(super) fn reading_limit(&self, room_id: &RoomId, user: &UserId) -> Result<u64> {
        match self.visible_until(room_id, user) {
            Ok(until) => Ok(until.min(self.current_pos())),
            Err(e) if matches!(e.errcode(), "M_FORBIDDEN" | "M_NOT_FOUND") => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The thread of `root` as `user` sees it; `None` when they may see none of its replies.
    fn user_thread(
        &self,
        room_id: &RoomId,
        user: &UserId,
        root: &EventId,
        sent_root: bool,
        summary: &ThreadSummary,
        viewer: &Viewer,
    ) -> Result<Option<UserThread>> {
        let (latest, count) = if viewer.sees(summary.latest_pos) {
            (summary.latest.clone(), summary.count)
        } else {
            let mut latest = None;
            let mut count = 0;
            for entry in
                self.relation_range(room_id, root, THREAD, 0, u64::MAX, Direction::Backward)
            {
                let (pos, id) = entry?;
                if viewer.sees(pos) {
                    count += 1;
                    latest.get_or_insert(id);
                }
            }
            match latest {
                Some(latest) => (latest, count),
                None => return Ok(None),
            }
        };
        let Some(latest) = self.get_pdu(&latest)? else {
            return Ok(None);
        };
        let participated = sent_root || self.replied_in_thread(room_id, root, user)?;
        Ok(Some(UserThread {
            latest,
            count,
            participated,
        }))
    }

    /// The room's threads that `user` may see (the root and at least one reply), newest
    /// activity first; with `participated_only`, those the user sent the root of or
    /// replied to. `from` is a `next_batch` of an earlier page. 403 when the user may not
    /// read the room.
    pub fn threads(
        &self,
        room_id: &RoomId,
        user: &UserId,
        participated_only: bool,
        from: Option<Token>,
        limit: usize,
    ) -> Result<ThreadsPage> {
        let until = self.visible_until(room_id, user)?.min(self.current_pos());
        let viewer = self.viewer(room_id, user, until)?;
        let limit = limit.clamp(1, 100);
        let mut chunk = Vec::new();
        let mut last = None;
        let mut next_batch = None;
        for entry in self.threads_by_activity(room_id, from.map(|t| t.0)) {
            let (activity, root) = entry?;
            let Some((root_pos, pdu)) = self.get_pdu_with_pos(&root)? else {
                continue;
            };
            if pdu.room_id != room_id || !viewer.sees(root_pos) {
                continue;
            }
            let Some(summary) = self.thread_summary(room_id, &root)? else {
                continue;
            };
            let sent_root = pdu.sender == user;
            let Some(thread) =
                self.user_thread(room_id, user, &root, sent_root, &summary, &viewer)?
            else {
                continue;
            };
            if participated_only && !thread.participated {
                continue;
            }
            if chunk.len() == limit {
                next_batch = last.map(Token);
                break;
            }
            chunk.push(pdu);
            last = Some(activity);
        }
        Ok(ThreadsPage { chunk, next_batch })
    }
}

#[cfg(test)]
mod tests {
    use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};

    use super::*;
    use crate::{
        config::Config,
        rooms::{CreateRoom, MemberProfile, NewEvent},
        services::Services,
    };

    fn user(name: &str) -> OwnedUserId {
        UserId::parse(format!("@{name}:localhost")).unwrap()
    }

    async fn say(
        s: &Services,
        room: &RoomId,
        sender: &UserId,
        body: &str,
        root: Option<&EventId>,
    ) -> OwnedEventId {
        let mut content = json!({"msgtype": "m.text", "body": body});
        if let Some(root) = root {
            content["m.relates_to"] = json!({"rel_type": "m.thread", "event_id": root});
        }
        s.rooms
            .send_to(room, sender, NewEvent::message("m.room.message", content))
            .await
            .unwrap()
            .0
    }

    /// `unsigned.m.relations.m.thread` of `event` as `reader` is served it.
    fn summary(s: &Services, room: &RoomId, reader: &UserId, event: &EventId) -> Value {
        let pdu = s.rooms.get_pdu(event).unwrap().unwrap();
        let mut served = [pdu.to_client_event()];
        s.rooms.add_unsigned(room, reader, &mut served).unwrap();
        served[0]["unsigned"]["m.relations"]["m.thread"].clone()
    }

    async fn joined_room(s: &Services, creator: &UserId, others: &[&UserId]) -> OwnedRoomId {
        let req = CreateRoom {
            preset: Some("public_chat".into()),
            ..CreateRoom::default()
        };
        let room = s.rooms.create_room(creator, req).await.unwrap();
        for other in others {
            s.rooms
                .join(&room, other, &MemberProfile::default(), None)
                .await
                .unwrap();
        }
        room
    }

    #[tokio::test]
    async fn each_reader_gets_the_thread_as_they_may_see_it() {
        let s = Services::in_memory(Config::default()).unwrap();
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let room = joined_room(&s, &alice, &[&bob, &carol]).await;
        let root = say(&s, &room, &alice, "root", None).await;
        let plain = say(&s, &room, &alice, "plain", None).await;
        say(&s, &room, &bob, "b1", Some(&root)).await;
        let b2 = say(&s, &room, &bob, "b2", Some(&root)).await;

        let alice_view = summary(&s, &room, &alice, &root);
        assert_eq!(alice_view["count"], 2, "{alice_view}");
        assert_eq!(alice_view["latest_event"]["event_id"], b2.as_str());
        assert_eq!(alice_view["latest_event"]["content"]["body"], "b2");
        assert_eq!(alice_view["latest_event"]["unsigned"]["membership"], "join");
        assert_eq!(
            alice_view["current_user_participated"], true,
            "sent the root"
        );
        assert_eq!(
            summary(&s, &room, &bob, &root)["current_user_participated"],
            true
        );
        assert_eq!(
            summary(&s, &room, &carol, &root)["current_user_participated"],
            false
        );
        assert_eq!(summary(&s, &room, &alice, &plain), Value::Null);

        // Carol leaves; later replies are not hers to see, the count follows her view.
        s.rooms.leave(&room, &carol, None).await.unwrap();
        let a1 = say(&s, &room, &alice, "a1", Some(&root)).await;
        let carol_view = summary(&s, &room, &carol, &root);
        assert_eq!(carol_view["count"], 2, "{carol_view}");
        assert_eq!(carol_view["latest_event"]["event_id"], b2.as_str());
        let bob_view = summary(&s, &room, &bob, &root);
        assert_eq!(bob_view["count"], 3);
        assert_eq!(bob_view["latest_event"]["event_id"], a1.as_str());

        // A user who wiped the whole history sees no reply: no summary.
        s.rooms.wipe_history(&room, &bob).await.unwrap();
        assert_eq!(summary(&s, &room, &bob, &root), Value::Null);
    }

    #[tokio::test]
    async fn threads_list_newest_activity_first_and_page() {
        let s = Services::in_memory(Config::default()).unwrap();
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let room = joined_room(&s, &alice, &[&bob]).await;
        let first = say(&s, &room, &alice, "first", None).await;
        let second = say(&s, &room, &bob, "second", None).await;
        say(&s, &room, &alice, "no replies", None).await;
        say(&s, &room, &bob, "s1", Some(&second)).await;
        say(&s, &room, &bob, "f1", Some(&first)).await;
        let ids = |page: &ThreadsPage| -> Vec<String> {
            page.chunk.iter().map(|p| p.event_id.to_string()).collect()
        };
        let all = s.rooms.threads(&room, &alice, false, None, 10).unwrap();
        assert_eq!(ids(&all), [first.as_str(), second.as_str()]);
        assert!(all.next_batch.is_none());
        let mine = s.rooms.threads(&room, &alice, true, None, 10).unwrap();
        assert_eq!(ids(&mine), [first.as_str()]);
        let page = s.rooms.threads(&room, &bob, false, None, 1).unwrap();
        assert_eq!(ids(&page), [first.as_str()]);
        let rest = s
            .rooms
            .threads(&room, &bob, false, page.next_batch, 1)
            .unwrap();
        assert_eq!(ids(&rest), [second.as_str()]);
        assert!(rest.next_batch.is_none());
        // A new reply moves its thread to the front.
        say(&s, &room, &alice, "s2", Some(&second)).await;
        let all = s.rooms.threads(&room, &alice, false, None, 10).unwrap();
        assert_eq!(ids(&all), [second.as_str(), first.as_str()]);
        assert_eq!(
            s.rooms
                .threads(&room, &carol, false, None, 10)
                .err()
                .map(|e| e.errcode()),
            Some("M_FORBIDDEN")
        );
    }
}
