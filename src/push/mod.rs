//! Push rules and notifications: every new room event is evaluated against the push rules
//! of each joined member (ruma's evaluator, the spec's default ruleset); a notifying event
//! gets one record naming everyone it notifies, grouped by the actions that applied. The
//! records feed `unread_notifications`, `/notifications` and the HTTP pushers
//! ([`gateway`]). One record per event rather than one per recipient: in a room of 1,000
//! members a message is one storage write instead of 1,000.
//!
//! A user's rules live in their `m.push_rules` global account data (content
//! `{"global": ruleset}`), as clients expect to read them from `/sync`; users who never
//! changed a rule get the server default.

#[cfg(test)]
mod cluster_tests;
mod consumer;
mod counts;
mod evaluate;
pub mod gateway;
mod notifications;
mod purge;
mod pushers;
mod remote;
mod rules;
mod store;
#[cfg(test)]
mod tests;
mod unread;

use std::sync::{Arc, Mutex};

pub use self::{consumer::PushConsumer, notifications::NotificationsPage, store::PushRecord};

use ruma::{OwnedUserId, UserId};

use crate::{rooms::RoomsService, storage::Storage, users::UsersService};

/// The account-data type holding a user's rules.
pub const PUSH_RULES_TYPE: &str = "m.push_rules";

/// The push service.
pub struct PushService {
    storage: Arc<Storage>,
    rooms: Arc<RoomsService>,
    users: Arc<UsersService>,
    /// Each user's own rules once read: `None` for the server default.
    rules: Arc<Mutex<rules::RulesCache>>,
    /// A user id no event names (random per start): the default rules evaluated for it
    /// give every member they do not single out the same actions.
    nobody: OwnedUserId,
    /// Unread counts per (room, user) as of a read position: `(read_pos, notify,
    /// highlight)`. Kept up to date as records are written (under this lock, so a count
    /// being computed and a record being added cannot miss or double-count each other);
    /// recomputed when the user's read position moved.
    unread: Arc<Mutex<counts::UnreadCache>>,
    /// Users who have (or recently had) a pusher: the others are skipped without a
    /// lookup when an event is pushed. Only grows while running; rebuilt at start.
    with_pushers: Arc<Mutex<pushers::WithPushers>>,
    /// Names per (room, member) as the naming rules look for them, dropped at the
    /// member's next membership event.
    names: Arc<Mutex<evaluate::NameCache>>,
    /// Position (in evaluation order) of the first rule of the server default that looks
    /// for the reader's id or names in an event: a shared evaluation that stopped at a
    /// rule before it holds for every member on the default rules who is not the event's
    /// state key, without looking for their names.
    naming_from: usize,
    /// Whether the server default looks for display names or localparts at all.
    default_names: bool,
    gateway: gateway::Gateway,
}

/// A user id of this server that no event names: random, and with a localpart users cannot
/// register.
fn nobody(server: &ruma::ServerName) -> OwnedUserId {
    use rand::Rng;
    let nonce: u64 = rand::thread_rng().gen();
    UserId::parse(format!("@_myelin_push_nobody_{nonce:016x}:{server}"))
        .unwrap_or_else(|_| UserId::parse("@_myelin_push_nobody:localhost").expect("a valid id"))
}

impl PushService {
    /// Builds the service; pushes are delivered by a background task on the runtime.
    pub fn new(
        storage: Arc<Storage>,
        rooms: Arc<RoomsService>,
        users: Arc<UsersService>,
        gateway_policy: gateway::AddressPolicy,
    ) -> PushService {
        let server = rooms.server_name().to_owned();
        let (rules, unread, with_pushers, names) = Default::default();
        if storage.is_shared() {
            remote::watch(
                &storage,
                remote::Watched {
                    rules: &rules,
                    unread: &unread,
                    with_pushers: &with_pushers,
                    names: &names,
                },
            );
        }
        PushService {
            storage,
            rooms,
            users,
            rules,
            nobody: nobody(&server),
            unread,
            with_pushers,
            names,
            naming_from: evaluate::first_naming_rule(),
            default_names: evaluate::default_rules_look_for_names(),
            gateway: gateway::Gateway::new(gateway_policy),
        }
    }
}
