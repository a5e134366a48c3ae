//! Relations (`/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`, spec v1.3):
//! the events whose `content.m.relates_to` names an event with a `rel_type` — thread
//! replies, edits, reactions, references (also of encrypted events, whose `m.relates_to`
//! stays in the clear). A page reads the relation index (`relation_index.rs`): one range
//! scan per relation type of the event, keeping what the user may see.

use std::sync::Arc;

use ruma::{EventId, RoomId, UserId};

use super::{Direction, RoomsService, Token};
use crate::{events::Pdu, Result};

/// Which relations a page returns, and from where.
#[derive(Clone, Debug)]
pub struct RelationsQuery<'a> {
    /// Only this `rel_type`.
    pub rel_type: Option<&'a str>,
    /// Only events of this type (with a `rel_type`).
    pub event_type: Option<&'a str>,
    /// Start here (a `/messages` or `next_batch` token).
    pub from: Option<Token>,
    /// Stop here.
    pub to: Option<Token>,
    /// Newest first (`b`, the default) or oldest first.
    pub dir: Direction,
    /// At most this many.
    pub limit: usize,
}

/// One page of relations.
pub struct RelationsPage {
    /// The relations, in the requested direction.
    pub chunk: Vec<Arc<Pdu>>,
    /// Where the next page starts, when there may be more.
    pub next_batch: Option<Token>,
}

impl RoomsService {
    /// The relations of `event_id` that `user` may see (404 `M_NOT_FOUND` when the event
    /// itself is not in the room or hidden from them).
    pub fn relations(
        &self,
        room_id: &RoomId,
        user: &UserId,
        event_id: &EventId,
        query: &RelationsQuery<'_>,
    ) -> Result<RelationsPage> {
        self.visible_event(room_id, user, event_id)?;
        let parent = self.event_pos(event_id)?.unwrap_or(0);
        let cap = self.visible_until(room_id, user)?.min(self.current_pos());
        let limit = query.limit.clamp(1, 1000);
        // `lo < pos <= hi`.
        let (lo, hi) = match query.dir {
            Direction::Backward => (
                query.to.map_or(parent, |t| t.0.max(parent)),
                query.from.map_or(cap, |t| t.0.min(cap)),
            ),
            Direction::Forward => (
                query.from.map_or(parent, |t| t.0.max(parent)),
                query.to.map_or(cap, |t| t.0.min(cap)),
            ),
        };
        if lo >= hi {
            return Ok(RelationsPage {
                chunk: Vec::new(),
                next_batch: None,
            });
        }
        let viewer = self.viewer(room_id, user, cap)?;
        let rel_types = match query.rel_type {
            Some(rel_type) => vec![rel_type.to_owned()],
            None => self.relation_types(room_id, event_id)?,
        };
        // Up to `limit + 1` of each type in the walking order, merged: one more than a
        // page tells whether another page follows.
        let mut found: Vec<(u64, Arc<Pdu>)> = Vec::new();
        for rel_type in &rel_types {
            let mut taken = 0;
            for entry in self.relation_range(room_id, event_id, rel_type, lo, hi, query.dir) {
                let (pos, id) = entry?;
                if !viewer.sees(pos) {
                    continue;
                }
                let Some(pdu) = self.get_pdu(&id)? else {
                    continue;
                };
                if query
                    .event_type
                    .is_some_and(|want| pdu.kind.to_string() != want)
                {
                    continue;
                }
                found.push((pos, pdu));
                taken += 1;
                if taken > limit {
                    break;
                }
            }
        }
        match query.dir {
            Direction::Backward => found.sort_by_key(|(pos, _)| std::cmp::Reverse(*pos)),
            Direction::Forward => found.sort_by_key(|(pos, _)| *pos),
        }
        let more = found.len() > limit;
        found.truncate(limit);
        // The next page starts right after the last relation of this one.
        let next_batch = match (more, found.last()) {
            (true, Some((pos, _))) => Some(match query.dir {
                Direction::Backward => Token(pos - 1),
                Direction::Forward => Token(*pos),
            }),
            _ => None,
        };
        Ok(RelationsPage {
            chunk: found.into_iter().map(|(_, pdu)| pdu).collect(),
            next_batch,
        })
    }
}

#[cfg(test)]
mod tests {
    use ruma::UserId;
    use serde_json::{json, Value};

    use super::*;
    use crate::{
        config::Config,
        rooms::{CreateRoom, NewEvent},
        services::Services,
    };

    #[tokio::test]
    async fn pages_of_relations_continue_without_gaps() {
        let s = Services::in_memory(Config::default()).unwrap();
        let alice = UserId::parse("@alice:localhost").unwrap();
        let room = s
            .rooms
            .create_room(&alice, CreateRoom::default())
            .await
            .unwrap();
        let send = |content: serde_json::Value| {
            let s = &s;
            let (room, alice) = (&room, &alice);
            async move {
                let guard = s.rooms.lock(room).await;
                let event = NewEvent::message("m.room.message", content);
                s.rooms.send(guard, alice, event).await.unwrap().0
            }
        };
        let root = send(json!({"body": "root"})).await;
        for i in 0..3 {
            send(json!({"body": format!("r{i}"),
                "m.relates_to": {"rel_type": "m.thread", "event_id": root}}))
            .await;
            send(json!({"body": "noise"})).await;
        }
        let mut query = RelationsQuery {
            rel_type: Some("m.thread"),
            event_type: None,
            from: None,
            to: None,
            dir: Direction::Backward,
            limit: 2,
        };
        let first = s.rooms.relations(&room, &alice, &root, &query).unwrap();
        assert_eq!(first.chunk.len(), 2);
        query.from = first.next_batch;
        let second = s.rooms.relations(&room, &alice, &root, &query).unwrap();
        assert_eq!(second.chunk.len(), 1);
        let bodies: Vec<String> = first
            .chunk
            .iter()
            .chain(&second.chunk)
            .map(|p| serde_json::from_str::<Value>(p.content.get()).unwrap()["body"].to_string())
            .collect();
        assert_eq!(bodies, ["\"r2\"", "\"r1\"", "\"r0\""]);
        query.rel_type = Some("m.annotation");
        query.from = None;
        assert!(s
            .rooms
            .relations(&room, &alice, &root, &query)
            .unwrap()
            .chunk
            .is_empty());
    }
}
