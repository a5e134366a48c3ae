//! Stream plumbing below every service: the per-user [`Notifier`] that wakes long-polling
//! syncs.

mod notifier;

pub use self::notifier::{Notifier, Parked};
