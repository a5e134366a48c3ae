//! The `meetings` consumer of the event pipeline: a new virtual room gets its join link
//! once its `m.room.create` is durable, and a temporary participant's call-membership
//! change is looked at right away (recorded when they join the call, removed when they
//! withdraw it). Both are idempotent, so a replay after a crash is harmless.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::MeetingsService;
use crate::{
    pipeline::{Appended, Checkpoint, EventConsumer},
    rtc::calls::{CALL_MEMBER_EVENT, RTC_MEMBER_EVENT},
    storage::Storage,
    Result,
};

/// Gives every new virtual room a join link.
pub struct MeetingsConsumer {
    storage: Arc<Storage>,
    meetings: Arc<MeetingsService>,
}

impl MeetingsConsumer {
    /// The consumer.
    pub fn new(storage: Arc<Storage>, meetings: Arc<MeetingsService>) -> MeetingsConsumer {
        MeetingsConsumer { storage, meetings }
    }
}

impl EventConsumer for MeetingsConsumer {
    fn name(&self) -> &'static str {
        "meetings"
    }

    fn consume<'a>(
        &'a self,
        events: &'a [Appended],
        checkpoint: Checkpoint,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut handled = false;
            for event in events {
                let pdu = &event.pdu;
                let kind = pdu.kind.to_string();
                if kind == CALL_MEMBER_EVENT || kind == RTC_MEMBER_EVENT {
                    handled = true;
                    let withdrawn = pdu.content.get().trim() == "{}";
                    self.meetings
                        .call_membership_changed(&pdu.room_id, &pdu.sender, withdrawn)
                        .await?;
                } else if kind == "m.room.create" && pdu.state_key.as_deref() == Some("") {
                    handled = true;
                    // A purged room has no record any more: nothing to link.
                    if let Err(e) = self.meetings.link_new_room(&pdu.room_id, &pdu.sender).await {
                        if e.errcode() != "M_NOT_FOUND" {
                            return Err(e);
                        }
                    }
                }
            }
            if !handled {
                return checkpoint.skip();
            }
            self.storage.commit(checkpoint.into_batch())
        })
    }
}
