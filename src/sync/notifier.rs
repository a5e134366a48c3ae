//! Per-user wake-ups for long-polling `/sync`: an event wakes exactly the users it
//! concerns. No polling loop, no sled subscriber on the sync path.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{OwnedUserId, UserId};
use tokio::sync::Notify;

/// Wakes waiting syncs per user.
#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, Arc<Notify>>>,
}

impl Notifier {
    /// A notifier with nobody waiting.
    pub fn new() -> Notifier {
        Notifier::default()
    }

    /// The wake-up handle of a user; create the `notified()` future and `enable()` it
    /// before checking for new data, so nothing committed in between is missed.
    pub fn handle(&self, user: &UserId) -> Arc<Notify> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.entry(user.to_owned()).or_default().clone()
    }

    /// Wakes every waiting sync of the given users.
    pub fn notify<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        let map = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for user in users {
            if let Some(n) = map.get(user) {
                n.notify_waiters();
            }
        }
    }

    /// Wakes one user.
    pub fn notify_user(&self, user: &UserId) {
        self.notify(std::iter::once(user));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn notifies_only_the_named_user() {
        let n = Notifier::new();
        let alice: OwnedUserId = "@alice:x".try_into().unwrap();
        let bob: OwnedUserId = "@bob:x".try_into().unwrap();
        let (ha, hb) = (n.handle(&alice), n.handle(&bob));
        let fa = ha.notified();
        let fb = hb.notified();
        tokio::pin!(fa, fb);
        fa.as_mut().enable();
        fb.as_mut().enable();
        n.notify_user(&alice);
        tokio::time::timeout(Duration::from_secs(1), fa)
            .await
            .expect("alice woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), fb)
                .await
                .is_err(),
            "bob not woken"
        );
    }
}
