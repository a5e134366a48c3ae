//! The `group_dissolution` consumer of the event pipeline: after a member leaves (or is
//! kicked or banned from) a group, if nobody is joined any more, the group is dissolved
//! ([`PurgeService::dissolve_if_empty`]). It follows the sync notifier, so the last
//! leave is durable and visible before anything is withdrawn or purged, and its position
//! moves only once the purge is done: after a crash the leave comes again and the
//! dissolution is finished (an interrupted purge itself is finished at start).

use std::{collections::BTreeSet, sync::Arc};

use futures_util::future::BoxFuture;
use ruma::OwnedRoomId;

use super::PurgeService;
use crate::{
    pipeline::{Appended, Checkpoint, EventConsumer},
    storage::Storage,
    Result,
};

/// Dissolves groups whose last member left.
pub struct GroupDissolution {
    storage: Arc<Storage>,
    purge: Arc<PurgeService>,
}

impl GroupDissolution {
    /// The consumer over the purge service.
    pub fn new(storage: Arc<Storage>, purge: Arc<PurgeService>) -> GroupDissolution {
        GroupDissolution { storage, purge }
    }
}

/// Whether the event takes someone out of a room.
fn is_departure(event: &Appended) -> bool {
    event.pdu.kind.to_string() == "m.room.member"
        && matches!(
            event.pdu.content_value()["membership"].as_str(),
            Some("leave" | "ban")
        )
}

impl EventConsumer for GroupDissolution {
    fn name(&self) -> &'static str {
        "group_dissolution"
    }

    fn consume<'a>(
        &'a self,
        events: &'a [Appended],
        checkpoint: Checkpoint,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let rooms: BTreeSet<OwnedRoomId> = events
                .iter()
                .filter(|e| is_departure(e))
                .map(|e| e.pdu.room_id.clone())
                .collect();
            if rooms.is_empty() {
                return checkpoint.skip();
            }
            for room in rooms {
                self.purge.dissolve_if_empty(&room).await?;
            }
            self.storage.commit(checkpoint.into_batch())
        })
    }
}
