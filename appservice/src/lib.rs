//! Application services for Myelin: registration files, their validation, namespace
//! matching, and the bodies the homeserver sends to an appservice (transactions, pings).
//!
//! Nothing here speaks HTTP or touches storage; the server (`myelin`) loads registrations
//! with [`Registration::from_yaml`], checks a set of them with [`validate_set`] and asks
//! [`Registration`] whether a user, alias or room belongs to it.

mod registration;
mod transaction;

pub use registration::{
    validate_set, Namespace, NamespaceKind, Namespaces, Registration, RegistrationError,
};
pub use transaction::{
    DeviceLists, OneTimeKeyCounts, PingRequest, PingResponse, Transaction, UnusedFallbackKeyTypes,
};
