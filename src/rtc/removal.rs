//! The `call_removal` consumer of the event pipeline: someone who leaves a room — or is
//! kicked or banned from it — is disconnected from the room's call on the SFU at once,
//! and the SFU refuses the LiveKit tokens they were given before (a new one needs a new
//! membership). Idempotent, so a replay after a crash is harmless.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use ruma::UserId;
use serde_json::Value;

use crate::{
    pipeline::{Appended, Checkpoint, EventConsumer},
    rtc::RtcService,
    storage::Storage,
    Result,
};

/// Takes people who leave a room out of its call.
pub struct CallRemovalConsumer {
    storage: Arc<Storage>,
    rtc: Arc<RtcService>,
}

impl CallRemovalConsumer {
    /// The consumer.
    pub fn new(storage: Arc<Storage>, rtc: Arc<RtcService>) -> CallRemovalConsumer {
        CallRemovalConsumer { storage, rtc }
    }
}

/// The user a member event takes out of the room (`leave` or `ban`), if any.
fn removed_user(kind: &str, state_key: Option<&str>, content: &str) -> Option<String> {
    if kind != "m.room.member" {
        return None;
    }
    let content: Value = serde_json::from_str(content).ok()?;
    match content["membership"].as_str() {
        Some("leave" | "ban") => state_key
            .filter(|k| UserId::parse(*k).is_ok())
            .map(str::to_owned),
        _ => None,
    }
}

impl EventConsumer for CallRemovalConsumer {
    fn name(&self) -> &'static str {
        "call_removal"
    }

    fn consume<'a>(
        &'a self,
        events: &'a [Appended],
        checkpoint: Checkpoint,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut removals = false;
            for event in events {
                let pdu = &event.pdu;
                let Some(user) = removed_user(
                    &pdu.kind.to_string(),
                    pdu.state_key.as_deref(),
                    pdu.content.get(),
                ) else {
                    continue;
                };
                let Ok(user) = UserId::parse(user) else {
                    continue;
                };
                removals = true;
                // No SFU (or one that is down) has nobody to disconnect now; the pipeline
                // must not stall on it.
                match self.rtc.remove_from_call(&pdu.room_id, &user).await {
                    Ok(gone) if !gone.is_empty() => {
                        tracing::info!(room = %pdu.room_id, %user, ?gone, "removed from the call")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(room = %pdu.room_id, %user, error = %e, "SFU removal failed")
                    }
                }
            }
            if !removals {
                return checkpoint.skip();
            }
            self.storage.commit(checkpoint.into_batch())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::removed_user;

    #[test]
    fn leaves_and_bans_remove_joins_do_not() {
        let member = |m: &str| format!(r#"{{"membership":"{m}"}}"#);
        for (membership, removed) in [
            ("leave", true),
            ("ban", true),
            ("join", false),
            ("invite", false),
            ("knock", false),
        ] {
            assert_eq!(
                removed_user("m.room.member", Some("@bob:x"), &member(membership)).is_some(),
                removed,
                "{membership}"
            );
        }
        assert_eq!(removed_user("m.room.message", None, "{}"), None);
        assert_eq!(
            removed_user("m.room.member", Some("not a user"), &member("leave")),
            None
        );
    }
}
