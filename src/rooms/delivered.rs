//! Delivered receipts (`io.myelin.delivered`): when a sync hands a recipient's device a
//! room's newest events, the recipient is recorded as having received them, one latest
//! position per user and room like `m.read`, and the other members see it in the room's
//! `m.receipt`. A read receipt implies delivered.
//!
//! Delivery must not slow syncs down: the sync only notes the position in memory; a
//! background task writes what was noted every [`COALESCE`] (receipts need not be durable
//! before the sync answers) and wakes only the senders of the delivered events, once per
//! round (they show the ticks); the other members get the receipts with their next sync.
//!
//! Every delivered receipt is one more entry every other member's sync reads, so a
//! message to a room of N members costs N² receipt reads. Rooms with more than
//! [`DELIVERED_MAX_MEMBERS`] joined members record no delivered receipts (read receipts
//! still work there); 1,000-member rooms keep their fan-out speed.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, Once},
    time::Duration,
};

use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::sync::Notify;

use super::{ephemeral::NewReceipt, RoomsService};
use crate::{storage::keys, Result};

/// The receipt type of a delivery.
pub const DELIVERED_RECEIPT: &str = "io.myelin.delivered";

/// How long noted deliveries gather before they are written together.
const COALESCE: Duration = Duration::from_millis(100);

/// The largest room (joined members) where deliveries are recorded.
pub const DELIVERED_MAX_MEMBERS: usize = 100;

pub(super) struct Deliveries {
    /// The latest delivered (or read) position known per room and user, written or
    /// pending: a sync that delivers nothing newer notes nothing.
    latest: Mutex<HashMap<(OwnedRoomId, OwnedUserId), u64>>,
    /// Noted deliveries not written yet, the latest per room and user: the event and
    /// its sender.
    pending: Mutex<HashMap<(OwnedRoomId, OwnedUserId), (OwnedEventId, OwnedUserId)>>,
    wake: Arc<Notify>,
    started: Once,
}

impl Default for Deliveries {
    fn default() -> Deliveries {
        Deliveries {
            latest: Mutex::default(),
            pending: Mutex::default(),
            wake: Arc::default(),
            started: Once::new(),
        }
    }
}

impl Deliveries {
    /// Forgets a room (purged).
    pub(super) fn forget(&self, room_id: &RoomId) {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(room, _), _| room != room_id);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(room, _), _| room != room_id);
    }
}

impl RoomsService {
    /// Whether deliveries are recorded in this room (not over [`DELIVERED_MAX_MEMBERS`]
    /// joined members): callers check it before any other work for a delivery.
    pub fn records_deliveries(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.members(room_id)?.count(super::Membership::Join) <= DELIVERED_MAX_MEMBERS)
    }

    /// Notes that a sync delivered the room's events up to `(pos, event_id)` to `user` (the
    /// newest delivered event sent by someone else). Cheap: memory only, written shortly
    /// after by the delivery task.
    pub fn note_delivered(
        self: &Arc<Self>,
        room_id: &RoomId,
        user: &UserId,
        pos: u64,
        event_id: &EventId,
        sender: &UserId,
    ) -> Result<()> {
        if !self.records_deliveries(room_id)? {
            return Ok(());
        }
        let key = (room_id.to_owned(), user.to_owned());
        let cached = self
            .deliveries
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let known = match cached {
            Some(p) => p,
            None => self.stored_delivered_pos(room_id, user)?,
        };
        {
            let mut latest = self
                .deliveries
                .latest
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let entry = latest.entry(key.clone()).or_insert(known);
            if *entry >= pos {
                return Ok(());
            }
            *entry = pos;
        }
        self.deliveries
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (event_id.to_owned(), sender.to_owned()));
        self.start_delivery_task();
        self.deliveries.wake.notify_one();
        Ok(())
    }

    /// The stored delivered or read position of the user in the room (0: none).
    fn stored_delivered_pos(&self, room_id: &RoomId, user: &UserId) -> Result<u64> {
        let delivered = self
            .receipt_pos(room_id, DELIVERED_RECEIPT, user)?
            .unwrap_or(0);
        Ok(delivered.max(self.own_read_pos(room_id, user)?.unwrap_or(0)))
    }

    fn start_delivery_task(self: &Arc<Self>) {
        self.deliveries.started.call_once(|| {
            let this = Arc::downgrade(self);
            let wake = self.deliveries.wake.clone();
            tokio::spawn(async move {
                loop {
                    wake.notified().await;
                    tokio::time::sleep(COALESCE).await;
                    let Some(this) = this.upgrade() else {
                        return;
                    };
                    if let Err(e) = this.write_deliveries() {
                        tracing::warn!(error = %e, "writing delivered receipts");
                    }
                }
            });
        });
    }

    /// Writes the noted deliveries and wakes the senders of the delivered events once.
    fn write_deliveries(&self) -> Result<()> {
        let pending = std::mem::take(
            &mut *self
                .deliveries
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let receipts: Vec<NewReceipt<'_>> = pending
            .iter()
            .map(|((room_id, user), (event_id, _))| NewReceipt {
                room_id,
                user,
                kind: DELIVERED_RECEIPT,
                event_id,
                thread: "",
            })
            .collect();
        self.record_receipts(&receipts)?;
        let senders: HashSet<&UserId> = pending.values().map(|(_, sender)| &**sender).collect();
        self.notifier.notify(senders);
        Ok(())
    }

    /// The ticks of a message for its sender: who has it delivered and who has read it,
    /// keeping only the users `shows` accepts (not in privacy mode). 404 when the caller
    /// cannot see the event, 403 when they did not send it.
    pub fn ticks(
        &self,
        room_id: &RoomId,
        caller: &UserId,
        event_id: &EventId,
        shows: impl Fn(&UserId) -> Result<bool>,
    ) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
        let pdu = self.visible_event(room_id, caller, event_id)?;
        if pdu.sender != caller {
            return Err(crate::Error::forbidden(
                "Only the sender of a message sees its ticks",
            ));
        }
        let pos = self
            .event_pos(event_id)?
            .ok_or_else(|| crate::Error::not_found("Event not found"))?;
        let (mut delivered, mut read) = self.receipt_holders(room_id, pos)?;
        // Every reader is also in `delivered` (a read implies delivered).
        let mut shown: HashSet<OwnedUserId> = HashSet::new();
        for user in &delivered {
            if user != caller && shows(user)? {
                shown.insert(user.clone());
            }
        }
        delivered.retain(|u| shown.contains(u));
        read.retain(|u| shown.contains(u));
        Ok((delivered, read))
    }

    /// Who has the event at `pos` of the room delivered and who has read it, as public
    /// receipts say (a read implies delivered). `m.read.private` never counts.
    fn receipt_holders(
        &self,
        room_id: &RoomId,
        pos: u64,
    ) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
        let mut delivered: HashSet<OwnedUserId> = HashSet::new();
        let mut read: HashSet<OwnedUserId> = HashSet::new();
        let prefix = keys::strs(&[room_id.as_str()]);
        for kv in self.storage.trees.receipts.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let parts = keys::split_strs(&k);
            let [_, kind, user, ..] = parts.as_slice() else {
                continue;
            };
            let is_read = *kind == "m.read";
            if !is_read && *kind != DELIVERED_RECEIPT {
                continue;
            }
            let Ok(user) = UserId::parse(*user) else {
                continue;
            };
            let Some(at) = self.record_event_pos(&serde_json::from_slice(&v)?)? else {
                continue;
            };
            if at >= pos {
                delivered.insert(user.clone());
                if is_read {
                    read.insert(user);
                }
            }
        }
        let mut delivered: Vec<_> = delivered.into_iter().collect();
        let mut read: Vec<_> = read.into_iter().collect();
        delivered.sort();
        read.sort();
        Ok((delivered, read))
    }
}

#[cfg(test)]
mod tests {
    use ruma::{OwnedUserId, UserId};

    use super::*;
    use crate::rooms::test_support::room_with_message;

    fn user(name: &str) -> OwnedUserId {
        UserId::parse(format!("@{name}:localhost")).unwrap()
    }

    async fn delivered_to(s: &crate::services::Services, room: &RoomId) -> Vec<OwnedUserId> {
        s.rooms.write_deliveries().unwrap();
        let prefix = keys::strs(&[room.as_str(), DELIVERED_RECEIPT]);
        let mut out: Vec<OwnedUserId> = s
            .storage()
            .trees
            .receipts
            .scan_prefix(&prefix)
            .filter_map(|kv| {
                let (k, _) = kv.ok()?;
                let parts = keys::split_strs(&k);
                UserId::parse(*parts.get(2)?).ok()
            })
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn noted_once_and_not_in_rooms_over_the_cap() {
        let (s, alice, room, event) = room_with_message().await;
        let bob = user("bob");
        s.rooms
            .invite(&room, &alice, &bob, None, false, None)
            .await
            .unwrap();
        s.rooms
            .join(&room, &bob, &Default::default(), None)
            .await
            .unwrap();
        let pos = s.rooms.event_pos(&event).unwrap().unwrap();
        s.rooms
            .note_delivered(&room, &bob, pos, &event, &alice)
            .unwrap();
        assert_eq!(delivered_to(&s, &room).await, vec![bob.clone()]);
        // Noting the same (or an older) delivery again writes nothing.
        let before = s.rooms.current_ephemeral_pos();
        s.rooms
            .note_delivered(&room, &bob, pos, &event, &alice)
            .unwrap();
        s.rooms.write_deliveries().unwrap();
        assert_eq!(s.rooms.current_ephemeral_pos(), before);
        let (delivered, read) = s.rooms.receipt_holders(&room, pos).unwrap();
        assert_eq!((delivered, read), (vec![bob.clone()], vec![]));

        // Deliveries noted in one round are written at one ephemeral position, and a
        // sync reading from before it gets all of them.
        let carol = user("carol");
        s.rooms
            .invite(&room, &alice, &carol, None, false, None)
            .await
            .unwrap();
        s.rooms
            .join(&room, &carol, &Default::default(), None)
            .await
            .unwrap();
        let content = serde_json::json!({"msgtype": "m.text", "body": "second"});
        let (second, _) = s
            .rooms
            .send_to(
                &room,
                &alice,
                super::super::NewEvent::message("m.room.message", content),
            )
            .await
            .unwrap();
        let second_pos = s.rooms.event_pos(&second).unwrap().unwrap();
        let before = s.rooms.current_ephemeral_pos();
        for member in [&bob, &carol] {
            s.rooms
                .note_delivered(&room, member, second_pos, &second, &alice)
                .unwrap();
        }
        s.rooms.write_deliveries().unwrap();
        assert_eq!(s.rooms.current_ephemeral_pos(), before + 1);
        let receipts = s
            .rooms
            .receipts_since(&room, before, &alice)
            .unwrap()
            .unwrap();
        let mut holders: Vec<&String> = receipts[second.as_str()][DELIVERED_RECEIPT]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        holders.sort();
        assert_eq!(holders, vec![bob.as_str(), carol.as_str()]);

        // A room with more joined members than the cap records nothing.
        let big = s
            .rooms
            .create_room(&alice, Default::default())
            .await
            .unwrap();
        for i in 0..DELIVERED_MAX_MEMBERS {
            let member = user(&format!("m{i}"));
            s.rooms
                .invite(&big, &alice, &member, None, false, None)
                .await
                .unwrap();
            s.rooms
                .join(&big, &member, &Default::default(), None)
                .await
                .unwrap();
        }
        let content = serde_json::json!({"msgtype": "m.text", "body": "to many"});
        let (msg, _) = s
            .rooms
            .send_to(
                &big,
                &alice,
                super::super::NewEvent::message("m.room.message", content),
            )
            .await
            .unwrap();
        let pos = s.rooms.event_pos(&msg).unwrap().unwrap();
        s.rooms
            .note_delivered(&big, &user("m0"), pos, &msg, &alice)
            .unwrap();
        assert!(delivered_to(&s, &big).await.is_empty());
    }
}
