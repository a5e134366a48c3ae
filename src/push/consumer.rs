//! The `push` consumer of the event pipeline: evaluates each durable event against the
//! push rules of the members it concerns, writes the notification records in the same
//! batch as its position (a crash loses both or neither: no lost unread count), and queues
//! gateway pushes once that batch is durable (a restart never pushes an event twice).

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::PushService;
use crate::{
    pipeline::{Appended, Checkpoint, EventConsumer},
    Result,
};

/// Push rules, unread counts and pushes for every new event.
pub struct PushConsumer {
    push: Arc<PushService>,
}

impl PushConsumer {
    /// The consumer of the given push service.
    pub fn new(push: Arc<PushService>) -> PushConsumer {
        PushConsumer { push }
    }
}

impl EventConsumer for PushConsumer {
    fn name(&self) -> &'static str {
        "push"
    }

    fn consume<'a>(
        &'a self,
        events: &'a [Appended],
        checkpoint: Checkpoint,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut evaluated = Vec::new();
            for event in events {
                if let Some(e) = self.push.evaluate(&event.pdu, event.pos)? {
                    evaluated.push(e);
                }
            }
            if evaluated.is_empty() {
                // Nobody to notify: evaluating these events again records nothing either.
                return checkpoint.skip();
            }
            self.push.record(&evaluated, checkpoint.into_batch())?;
            // Only events with a recipient who may have a pusher wait for the flush (most
            // have none: the flush would be one more per batch for nothing).
            evaluated.retain(|e| e.pushes.iter().any(|(u, _)| self.push.may_have_pushers(u)));
            if evaluated.is_empty() {
                return Ok(());
            }
            // Pushes leave only once the records are on disk; the consumers after this
            // one do not wait for that flush.
            let push = self.push.clone();
            tokio::spawn(async move {
                if let Err(e) = push.storage.durable().await {
                    tracing::error!(error = %e, "push records not durable; pushes dropped");
                    return;
                }
                for e in &evaluated {
                    if let Err(err) = push.deliver(e) {
                        tracing::warn!(event_id = %e.pdu.event_id, error = %err, "push delivery failed");
                    }
                }
            });
            Ok(())
        })
    }
}
