//! Relations (`/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`, spec v1.3):
//! the events whose `content.m.relates_to.event_id` names an event — thread replies,
//! edits, reactions, references (also of encrypted events, whose `m.relates_to` stays in
//! the clear). There is no relation index yet: a page reads the room's timeline as the
//! user may see it, from the related event onwards (a relation always comes after the
//! event it names), in batches, until it has `limit` relations.

use std::sync::Arc;

use ruma::{EventId, RoomId, UserId};
use serde_json::Value;

use super::{Direction, RoomsService, Token};
use crate::{events::Pdu, Result};

/// Events read from the timeline per batch while looking for relations.
const SCAN_BATCH: usize = 200;

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

/// The event a client-format content relates to, and how.
fn relation_of(pdu: &Pdu) -> Option<(String, Option<String>)> {
    let content: Value = serde_json::from_str(pdu.content.get()).ok()?;
    let relates = content.get("m.relates_to")?;
    let target = relates.get("event_id")?.as_str()?.to_owned();
    let rel_type = relates
        .get("rel_type")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some((target, rel_type))
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
        let wanted = |pdu: &Pdu| {
            relation_of(pdu).is_some_and(|(target, rel_type)| {
                target == event_id.as_str()
                    && query
                        .rel_type
                        .is_none_or(|want| rel_type.as_deref() == Some(want))
                    && query
                        .event_type
                        .is_none_or(|want| pdu.kind.to_string() == want)
            })
        };
        // `lo < pos <= hi`, narrowed from the walking end as batches are read.
        let (mut lo, mut hi) = match query.dir {
            Direction::Backward => (
                query.to.map_or(parent, |t| t.0.max(parent)),
                query.from.map_or(cap, |t| t.0.min(cap)),
            ),
            Direction::Forward => (
                query.from.map_or(parent, |t| t.0.max(parent)),
                query.to.map_or(cap, |t| t.0.min(cap)),
            ),
        };
        let mut chunk = Vec::new();
        while lo < hi {
            let (events, more) =
                self.visible_timeline(room_id, user, lo, hi, query.dir, SCAN_BATCH, None)?;
            let mut last = None;
            for (pos, pdu) in events {
                last = Some(pos);
                if !wanted(&pdu) {
                    continue;
                }
                chunk.push(pdu);
                if chunk.len() >= limit {
                    // The next page starts right after this relation.
                    let next = match query.dir {
                        Direction::Backward => Token(pos - 1),
                        Direction::Forward => Token(pos),
                    };
                    let left = match query.dir {
                        Direction::Backward => next.0 > lo,
                        Direction::Forward => next.0 < hi,
                    };
                    return Ok(RelationsPage {
                        chunk,
                        next_batch: left.then_some(next),
                    });
                }
            }
            match (last, more) {
                (Some(pos), true) => match query.dir {
                    Direction::Backward => hi = pos - 1,
                    Direction::Forward => lo = pos,
                },
                _ => break,
            }
        }
        Ok(RelationsPage {
            chunk,
            next_batch: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use ruma::UserId;
    use serde_json::json;

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
