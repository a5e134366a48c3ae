//! The `delayed_events` consumer of the event pipeline: a state event cancels other users'
//! pending delayed events for the same state, in the same batch as the consumer's position.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::{
    pipeline::{Appended, Checkpoint, EventConsumer},
    rtc::RtcService,
    Result,
};

/// Cancels delayed state events that newer state supersedes.
pub struct DelayedEventsConsumer {
    rtc: Arc<RtcService>,
}

impl DelayedEventsConsumer {
    /// The consumer of the given RTC service.
    pub fn new(rtc: Arc<RtcService>) -> DelayedEventsConsumer {
        DelayedEventsConsumer { rtc }
    }
}

impl EventConsumer for DelayedEventsConsumer {
    fn name(&self) -> &'static str {
        "delayed_events"
    }

    fn consume<'a>(
        &'a self,
        events: &'a [Appended],
        mut checkpoint: Checkpoint,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut cancelled = false;
            let mut state = false;
            for event in events {
                let pdu = &event.pdu;
                if let Some(state_key) = &pdu.state_key {
                    state = true;
                    cancelled |= self.rtc.cancel_superseded(
                        &pdu.room_id,
                        &pdu.kind.to_string(),
                        state_key,
                        &pdu.sender,
                        checkpoint.batch(),
                    )?;
                }
            }
            if !state {
                // Only state events cancel anything: these are safe to see again.
                return checkpoint.skip();
            }
            self.rtc
                .commit_cancellations(checkpoint.into_batch(), cancelled)
        })
    }
}
