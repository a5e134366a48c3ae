//! The policy seam inside `append`: rules a room kind adds on top of the spec's
//! authorization rules (member caps, owner protection, the last-moderator rule). Each
//! policy sees the built event under the room lock before anything is written; a refusal
//! is a Matrix error and writes nothing. Policies run just before the auth rules, so an
//! event both refuse gets the policy's more precise reason; accepting an event never
//! spares it the auth rules.

use super::{RoomGuard, RoomRecord, RoomsService};
use crate::{events::Pdu, Result};

/// A rule that may refuse an event.
pub trait RoomPolicy: Send + Sync {
    /// The policy's name, for logs.
    fn name(&self) -> &'static str;

    /// Accepts the event or refuses it with the error the sender gets. `rooms` reads the
    /// room's current state and members (the state before this event).
    fn check(
        &self,
        rooms: &RoomsService,
        guard: &RoomGuard,
        room: &RoomRecord,
        event: &Pdu,
    ) -> Result<()>;
}

impl RoomsService {
    /// Runs every policy on an event about to be appended; the first refusal wins.
    pub(super) fn check_policies(
        &self,
        guard: &RoomGuard,
        room: &RoomRecord,
        event: &Pdu,
    ) -> Result<()> {
        for policy in &self.policies {
            if let Err(e) = policy.check(self, guard, room, event) {
                tracing::debug!(policy = policy.name(), event_id = %event.event_id, error = %e, "event refused by policy");
                return Err(e);
            }
        }
        Ok(())
    }
}
