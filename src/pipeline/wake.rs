//! The `sync_notifier` consumer: makes handled events visible to readers and wakes the
//! long-polling syncs of the users they concern (the room's joined members, and the target
//! of a membership change).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use ruma::{RoomId, UserId};

use super::{Appended, Checkpoint, EventConsumer};
use crate::{
    rooms::{RoomMembers, RoomsService},
    stream::Notifier,
    Result,
};

/// Wakes syncs for each handled event.
pub struct SyncNotifier {
    rooms: Arc<RoomsService>,
    notifier: Arc<Notifier>,
}

impl SyncNotifier {
    /// The consumer.
    pub fn new(rooms: Arc<RoomsService>, notifier: Arc<Notifier>) -> SyncNotifier {
        SyncNotifier { rooms, notifier }
    }

    fn wake(&self, events: &[Appended], checkpoint: Checkpoint) -> Result<()> {
        // Each room's member list once per batch, borrowed rather than copied: a message in
        // a room of thousands wakes thousands without cloning their ids.
        let mut rooms: Vec<(&RoomId, Arc<RoomMembers>)> = Vec::new();
        let mut targets: Vec<&UserId> = Vec::new();
        for event in events {
            let pdu = &event.pdu;
            if !rooms.iter().any(|(id, _)| *id == pdu.room_id) {
                rooms.push((&pdu.room_id, self.rooms.members(&pdu.room_id)?));
            }
            if pdu.kind.to_string() == "m.room.member" {
                if let Some(target) = pdu
                    .state_key
                    .as_deref()
                    .and_then(|k| <&UserId>::try_from(k).ok())
                {
                    targets.push(target);
                }
            }
        }
        let end = checkpoint.end();
        // Visible first: a woken sync must find the events.
        self.rooms.mark_visible(end);
        self.notifier.notify(
            rooms
                .iter()
                .flat_map(|(_, members)| members.joined())
                .chain(targets),
        );
        // Nothing to write: waking again after a restart is harmless (and everything
        // stored is visible at start), so the position need not be committed each round.
        checkpoint.skip()
    }
}

impl EventConsumer for SyncNotifier {
    fn name(&self) -> &'static str {
        "sync_notifier"
    }

    /// Every process wakes its own long polls.
    fn scope(&self) -> super::Scope {
        super::Scope::Process
    }

    fn consume<'a>(
        &'a self,
        events: &'a [Appended],
        checkpoint: Checkpoint,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.wake(events, checkpoint) })
    }
}
