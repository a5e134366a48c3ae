//! Building, authorising and appending events: the one path every new event takes.

use std::sync::Arc;

use ruma::{
    canonical_json::to_canonical_value, events::StateEventType, CanonicalJsonObject,
    CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedEventId, RoomId,
    RoomVersionId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    members::Membership,
    read::RecentEvents,
    relation_index::{relation_in, IndexWrites, Relation},
    RoomGuard, RoomsService,
};
use crate::{
    events::{self, Pdu},
    storage::{keys, Batch},
    Error, Result,
};

/// An event a local user asks to send.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The event type.
    pub kind: String,
    /// `Some` for state events.
    pub state_key: Option<String>,
    /// The event content.
    pub content: Value,
    /// For `m.room.redaction`: the redacted event.
    pub redacts: Option<OwnedEventId>,
    /// The client transaction, for idempotent sends.
    pub txn: Option<Transaction>,
    /// `origin_server_ts` chosen by an application service (`?ts=`); now when `None`.
    pub origin_server_ts: Option<u64>,
}

/// A client's transaction id and where it was used: the spec scopes idempotency to the
/// device and the endpoint (method and path), so the same id in another room, for another
/// event type or on another endpoint is another request.
#[derive(Clone, Debug)]
pub struct Transaction {
    /// The sending device.
    pub device: OwnedDeviceId,
    /// The endpoint without the transaction id, e.g. `PUT /rooms/{roomId}/send/{type}`.
    pub endpoint: String,
    /// The client's transaction id.
    pub txn_id: String,
}

impl Transaction {
    /// A transaction of `device` on `endpoint`.
    pub fn new(
        device: OwnedDeviceId,
        endpoint: impl Into<String>,
        txn_id: impl Into<String>,
    ) -> Transaction {
        Transaction {
            device,
            endpoint: endpoint.into(),
            txn_id: txn_id.into(),
        }
    }

    fn key(&self, user: &UserId) -> Vec<u8> {
        keys::strs(&[
            user.as_str(),
            self.device.as_str(),
            &self.endpoint,
            &self.txn_id,
        ])
    }
}

impl NewEvent {
    /// A message-like event.
    pub fn message(kind: impl Into<String>, content: Value) -> NewEvent {
        NewEvent {
            kind: kind.into(),
            state_key: None,
            content,
            redacts: None,
            txn: None,
            origin_server_ts: None,
        }
    }

    /// A state event.
    pub fn state(
        kind: impl Into<String>,
        state_key: impl Into<String>,
        content: Value,
    ) -> NewEvent {
        NewEvent {
            kind: kind.into(),
            state_key: Some(state_key.into()),
            content,
            redacts: None,
            txn: None,
            origin_server_ts: None,
        }
    }
}

/// How a PDU is stored: the signed event plus its stream position.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredPdu {
    pub pos: u64,
    pub pdu: CanonicalJsonObject,
}

impl RoomsService {
    /// [`RoomsService::send`] under the room's lock, taken here: for callers (request
    /// handlers) that do not already hold it for a read-then-write.
    pub async fn send_to(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: NewEvent,
    ) -> Result<(OwnedEventId, u64)> {
        let guard = self.lock(room_id).await;
        self.send(guard, sender, event).await
    }

    /// Builds, authorises and stores an event, then waits until it is durable and
    /// visible (handled by the pipeline's consumers that readers depend on).
    ///
    /// The room lock is released before waiting, so concurrent senders to one room share
    /// a group commit instead of queueing behind each other's fsync.
    #[tracing::instrument(skip(self, guard, event), fields(room = %guard.room_id(), kind = %event.kind))]
    pub async fn send(
        &self,
        guard: RoomGuard,
        sender: &UserId,
        event: NewEvent,
    ) -> Result<(OwnedEventId, u64)> {
        if let Some(txn) = &event.txn {
            if let Some(id) = self.txn_event(sender, txn)? {
                drop(guard);
                // The first request may still be waiting; this reply must not be earlier
                // than that one.
                let pos = self.event_pos(&id)?.unwrap_or(0);
                self.wait_visible(pos).await?;
                return Ok((id, pos));
            }
        }
        let result = self.append(&guard, sender, event)?;
        drop(guard);
        self.wait_visible(result.1).await?;
        Ok(result)
    }

    /// Adds `unsigned.transaction_id` to the client-format events of a list that `user`
    /// sent from `device` with a transaction id (the spec shows it to the sending device
    /// only).
    pub fn add_transaction_ids(
        &self,
        events: &mut [Value],
        user: &UserId,
        device: &ruma::DeviceId,
    ) -> Result<()> {
        for event in events {
            if event["sender"] != user.as_str() {
                continue;
            }
            let Some(event_id) = event["event_id"].as_str() else {
                continue;
            };
            let Some(v) = self.storage.trees.event_txns.get(event_id.as_bytes())? else {
                continue;
            };
            if let [sent_by, txn] = keys::split_strs(&v).as_slice() {
                if *sent_by == device.as_str() {
                    if !event["unsigned"].is_object() {
                        event["unsigned"] = serde_json::json!({});
                    }
                    event["unsigned"]["transaction_id"] = serde_json::json!(txn);
                }
            }
        }
        Ok(())
    }

    /// The event a transaction already produced, if any.
    pub fn txn_event(&self, user: &UserId, txn: &Transaction) -> Result<Option<OwnedEventId>> {
        match self.storage.trees.txns.get(&txn.key(user))? {
            Some(v) => Ok(Some(
                EventId::parse(String::from_utf8_lossy(&v).as_ref())
                    .map_err(|e| Error::internal(format!("stored txn event id: {e}")))?,
            )),
            None => Ok(None),
        }
    }

    /// Builds, authorises and commits an event (visible at once; not yet flushed).
    pub(super) fn append(
        &self,
        guard: &RoomGuard,
        sender: &UserId,
        event: NewEvent,
    ) -> Result<(OwnedEventId, u64)> {
        events::validate::check_new_event(&event.kind, event.state_key.as_deref(), &event.content)?;
        let room_id = guard.room_id();
        let record = self.room(room_id)?;
        let version = record.version.clone();
        let event = self.restricted_join_policy(room_id, sender, event)?;
        let (event_id, object, pdu) = self.build(room_id, &version, sender, &event)?;

        // The room policies first: where both refuse, theirs is the more precise reason
        // ("only the owner may lower a moderator" rather than "not enough power").
        self.check_policies(guard, &record, &pdu)?;
        events::auth::check_auth(
            &version,
            &pdu,
            |id| self.get_pdu(id).ok().flatten(),
            |kind, key| self.state_event(room_id, kind, key).ok().flatten(),
        )?;

        let mut batch = Batch::new();
        let trees = &self.storage.trees;
        // The relation index changes with the event: a redaction takes its target's
        // relation out before the new event's own relation goes in.
        let mut index = IndexWrites::new(trees);
        if let Some(target) = &event.redacts {
            self.add_redaction(&mut batch, &mut index, &version, sender, target, &pdu)?;
        }
        if let Some(txn) = &event.txn {
            batch.insert(&trees.txns, &txn.key(sender), event_id.as_bytes());
            batch.insert(
                &trees.event_txns,
                event_id.as_bytes(),
                &keys::strs(&[txn.device.as_str(), &txn.txn_id]),
            );
        }
        let membership = match (&event.state_key, event.kind.as_str()) {
            (Some(target), "m.room.member") => {
                let m = Membership::from_content(&event.content);
                let user = UserId::parse(target.as_str())
                    .map_err(|e| Error::invalid_param(format!("member state key: {e}")))?;
                Some((user, m))
            }
            _ => None,
        };

        let pos = {
            let mut last = self.stream.lock().unwrap_or_else(|e| e.into_inner());
            // The writes that depend on the event's position.
            let write = |pos: u64, batch: &mut Batch| -> Result<_> {
                batch.insert_json(
                    &trees.pdus,
                    event_id.as_bytes(),
                    &StoredPdu { pos, pdu: object },
                )?;
                batch.insert(&trees.stream, &pos.to_be_bytes(), room_id.as_bytes());
                batch.insert(
                    &trees.room_timeline,
                    &keys::KeyBuilder::new()
                        .str(room_id.as_str())
                        .u64(pos)
                        .build(),
                    event_id.as_bytes(),
                );
                if let Some((parent, rel_type)) = relation_in(&event.content) {
                    let relation = Relation {
                        room: room_id,
                        pos,
                        event_id: &event_id,
                        sender,
                        parent: &parent,
                        rel_type: &rel_type,
                    };
                    index.add(batch, &relation)?;
                }
                let related = index.parents().to_vec();
                index.write(batch)?;
                if let Some(state_key) = &event.state_key {
                    let base = keys::KeyBuilder::new()
                        .str(room_id.as_str())
                        .str(&event.kind)
                        .str(state_key);
                    batch.insert(
                        &trees.room_state,
                        &base.clone().build(),
                        event_id.as_bytes(),
                    );
                    batch.insert(
                        &trees.room_state_history,
                        &base.u64(pos).build(),
                        event_id.as_bytes(),
                    );
                }
                if let Some((user, m)) = &membership {
                    let key = keys::strs(&[user.as_str(), room_id.as_str()]);
                    // `joined`: whether the user was ever joined, which decides what history a
                    // departed user may still read.
                    let was_joined = *m == Membership::Join
                        || trees
                            .user_rooms
                            .get_json::<serde_json::Value>(&key)?
                            .is_some_and(|r| r["joined"] == true);
                    let record = serde_json::json!({
                        "membership": m.as_str(), "pos": pos, "event_id": event_id, "joined": was_joined,
                    });
                    batch.insert_json(&trees.user_rooms, &key, &record)?;
                    if *m == Membership::Join {
                        batch.remove(
                            &trees.forgotten,
                            &keys::strs(&[user.as_str(), room_id.as_str()]),
                        );
                    }
                }
                Ok(related)
            };
            let (pos, related) = if self.storage.is_shared() {
                // The position is drawn in the database, after every other process's
                // event before it has committed (see `cluster`).
                let mut related = Vec::new();
                let pos = self.storage.commit_counted(
                    &trees.meta,
                    super::cluster::TIMELINE_POS,
                    |pos, shared| {
                        std::mem::swap(shared, &mut batch);
                        related = write(pos, shared)?;
                        Ok(())
                    },
                )?;
                (pos, related)
            } else {
                let pos = *last + 1;
                let related = write(pos, &mut batch)?;
                self.storage.commit(batch)?;
                (pos, related)
            };
            self.relation_types_cache.forget(&related);
            metrics::counter!(crate::metrics::EVENTS_APPENDED).increment(1);
            if let Some((user, m)) = &membership {
                self.members.set_user_room(user, room_id, *m, pos);
            }
            self.tips
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(room_id.to_owned(), (event_id.clone(), pdu.depth));
            self.recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(room_id.to_owned())
                .or_insert_with(|| RecentEvents::starting_at(pos))
                .push(pos, event_id.clone());
            if let Some((user, m)) = &membership {
                self.members.set(room_id, user, *m);
            }
            self.pdu_cache_put(&event_id, pos, Arc::new(pdu));
            *last = (*last).max(pos);
            if self.storage.is_shared() {
                self.publication.committed(pos, &self.storage);
            } else {
                self.publication.applied(pos, &self.storage);
            }
            pos
        };
        tracing::debug!(%event_id, pos, "event appended");
        Ok((event_id, pos))
    }

    /// The events appended after position `after`, up to `upto` included, oldest first, at
    /// most `limit` (the pipeline's consumers read the stream with it).
    pub fn appended_between(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Arc<Pdu>)>> {
        let mut events = Vec::new();
        if upto <= after {
            return Ok(events);
        }
        let from = (after + 1).to_be_bytes();
        let to = upto.saturating_add(1).to_be_bytes();
        for kv in self.storage.trees.stream.range(&from, &to, false) {
            if events.len() >= limit {
                break;
            }
            let (k, room) = kv?;
            let Some(pos) = keys::leading_u64(&k) else {
                continue;
            };
            let room = RoomId::parse(String::from_utf8_lossy(&room).as_ref())
                .map_err(|e| Error::internal(format!("stored room id: {e}")))?;
            let key = keys::KeyBuilder::new().str(room.as_str()).u64(pos).build();
            let Some(id) = self.storage.trees.room_timeline.get(&key)? else {
                continue;
            };
            if let Some(pdu) = self.get_pdu(&parse_event_id(&id)?)? {
                events.push((pos, pdu));
            }
        }
        Ok(events)
    }

    fn build(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        sender: &UserId,
        event: &NewEvent,
    ) -> Result<(OwnedEventId, CanonicalJsonObject, Pdu)> {
        let content_raw = serde_json::value::to_raw_value(&event.content)?;
        let auth_events = events::builder::auth_events_for(
            &event.kind,
            sender,
            event.state_key.as_deref(),
            &content_raw,
            version,
            |kind: &StateEventType, key: &str| {
                self.state_event_id(room_id, kind.to_string().as_str(), key)
                    .ok()
                    .flatten()
            },
        )?;
        let (prev_events, depth) = match self.room_tip(room_id)? {
            Some((prev, prev_depth)) => (vec![prev], prev_depth + 1),
            None => (Vec::new(), 1),
        };

        let mut object = CanonicalJsonObject::new();
        let canon = |v: &dyn erased::Ser| v.canon();
        object.insert(
            "room_id".into(),
            CanonicalJsonValue::String(room_id.to_string()),
        );
        object.insert(
            "sender".into(),
            CanonicalJsonValue::String(sender.to_string()),
        );
        object.insert(
            "type".into(),
            CanonicalJsonValue::String(event.kind.clone()),
        );
        object.insert("content".into(), canon(&event.content)?);
        let ts = match event.origin_server_ts {
            Some(ts) => canon(&ts)?,
            None => canon(&MilliSecondsSinceUnixEpoch::now())?,
        };
        object.insert("origin_server_ts".into(), ts);
        object.insert("prev_events".into(), canon(&prev_events)?);
        object.insert("auth_events".into(), canon(&auth_events)?);
        object.insert("depth".into(), canon(&depth)?);
        if let Some(key) = &event.state_key {
            object.insert("state_key".into(), CanonicalJsonValue::String(key.clone()));
        }
        if let Some(redacts) = &event.redacts {
            // v11 carries `redacts` in content (the client sent it there or we add it);
            // earlier versions at the top level.
            if *version == RoomVersionId::V11 {
                if let Some(CanonicalJsonValue::Object(content)) = object.get_mut("content") {
                    content.insert(
                        "redacts".into(),
                        CanonicalJsonValue::String(redacts.to_string()),
                    );
                }
            } else {
                object.insert(
                    "redacts".into(),
                    CanonicalJsonValue::String(redacts.to_string()),
                );
            }
        }
        let (event_id, object) =
            events::builder::finalize_event(&self.keys, &self.server_name, version, object)?;
        let pdu = Pdu::from_canonical(event_id.clone(), object.clone())?;
        Ok((event_id, object, pdu))
    }

    fn add_redaction(
        &self,
        batch: &mut Batch,
        index: &mut IndexWrites<'_>,
        version: &RoomVersionId,
        sender: &UserId,
        target: &EventId,
        redaction: &Pdu,
    ) -> Result<()> {
        let trees = &self.storage.trees;
        let Some(stored) = trees.pdus.get_json::<StoredPdu>(target.as_bytes())? else {
            return Err(Error::not_found("Event to redact not found"));
        };
        let original = Pdu::from_canonical(target.to_owned(), stored.pdu.clone())?;
        if original.room_id != redaction.room_id {
            return Err(Error::not_found("Event to redact not found in this room"));
        }
        if original.sender != sender {
            let power = self.power_levels(&redaction.room_id)?;
            if power.user_level(sender) < power.redact {
                return Err(Error::forbidden("You may only redact your own events"));
            }
        }
        let because = to_canonical_value(redaction.to_client_event())
            .map_err(|e| Error::internal(format!("redaction event: {e}")))?;
        let mut redacted = events::redaction::redact(&stored.pdu, version)?;
        // Redacted content loses `m.relates_to` (unless a room version keeps it): the
        // relation leaves the index with it.
        let content_of = |object: &CanonicalJsonObject| {
            object
                .get("content")
                .and_then(|c| serde_json::to_value(c).ok())
                .unwrap_or(Value::Null)
        };
        if let Some((parent, rel_type)) = relation_in(&content_of(&stored.pdu)) {
            if relation_in(&content_of(&redacted)).as_ref()
                != Some(&(parent.clone(), rel_type.clone()))
            {
                let relation = Relation {
                    room: &original.room_id,
                    pos: stored.pos,
                    event_id: target,
                    sender: &original.sender,
                    parent: &parent,
                    rel_type: &rel_type,
                };
                index.remove(batch, &relation)?;
            }
        }
        let mut unsigned = CanonicalJsonObject::new();
        unsigned.insert("redacted_because".into(), because);
        redacted.insert("unsigned".into(), CanonicalJsonValue::Object(unsigned));
        batch.insert_json(
            &trees.pdus,
            target.as_bytes(),
            &StoredPdu {
                pos: stored.pos,
                pdu: redacted,
            },
        )?;
        self.invalidate_pdu(target);
        Ok(())
    }

    /// The newest event of a room.
    /// Id and depth of the room's newest event: from memory, else from storage.
    fn room_tip(&self, room_id: &RoomId) -> Result<Option<(OwnedEventId, u64)>> {
        // On a shared database another process may have appended since: read it under
        // the room's lock, from storage.
        if self.storage.is_shared() {
            return Ok(self
                .last_event(room_id)?
                .map(|pdu| (pdu.event_id.clone(), pdu.depth)));
        }
        if let Some(tip) = self
            .tips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room_id)
        {
            return Ok(Some(tip.clone()));
        }
        Ok(self
            .last_event(room_id)?
            .map(|pdu| (pdu.event_id.clone(), pdu.depth)))
    }

    pub fn last_event(&self, room_id: &RoomId) -> Result<Option<Arc<Pdu>>> {
        let prefix = keys::strs(&[room_id.as_str()]);
        match self
            .storage
            .trees
            .room_timeline
            .scan_prefix_dir(&prefix, true)
            .next()
        {
            Some(kv) => {
                let (_, id) = kv?;
                let id = parse_event_id(&id)?;
                self.get_pdu(&id)
            }
            None => Ok(None),
        }
    }
}

/// Parses a stored event id.
pub(super) fn parse_event_id(bytes: &[u8]) -> Result<OwnedEventId> {
    EventId::parse(String::from_utf8_lossy(bytes).as_ref())
        .map_err(|e| Error::internal(format!("stored event id: {e}")))
}

mod erased {
    //! Serialises any value into canonical JSON, mapping failures into our error.
    use ruma::CanonicalJsonValue;

    use crate::{Error, Result};

    pub trait Ser {
        fn canon(&self) -> Result<CanonicalJsonValue>;
    }

    impl<T: serde::Serialize> Ser for T {
        fn canon(&self) -> Result<CanonicalJsonValue> {
            ruma::canonical_json::to_canonical_value(self)
                .map_err(|e| Error::bad_json(format!("content is not canonical JSON: {e}")))
        }
    }
}
