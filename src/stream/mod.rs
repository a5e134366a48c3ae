//! Stream plumbing below every service: the per-user [`Notifier`] that wakes long-polling
//! syncs, and the [`RemoteWakes`] that wake them for other processes' changes.

mod notifier;
mod remote;

pub use self::{
    notifier::{Notifier, Parked},
    remote::{Related, RelatedFn, RemoteWakes},
};

#[cfg(test)]
pub(crate) use self::remote::test_support;
