//! Per-user wake-ups for long-polling `/sync`: an event wakes exactly the users it
//! concerns. No polling loop, no sled subscriber on the sync path.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use ruma::{OwnedUserId, UserId};
use tokio::sync::Notify;

/// Wakes waiting syncs per user.
#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, Arc<Notify>>>,
    /// Long-polls parked right now, per user (for tests and metrics).
    parked: Mutex<HashMap<OwnedUserId, usize>>,
    parked_total: AtomicUsize,
    /// Set at shutdown: long-polls answer at once instead of waiting.
    closing: AtomicBool,
}

/// Counts a parked long-poll while it lives (see [`Notifier::park`]).
pub struct Parked<'a> {
    notifier: &'a Notifier,
    user: OwnedUserId,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        let mut parked = self
            .notifier
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = parked.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                parked.remove(&self.user);
            }
        }
        self.notifier.parked_total.fetch_sub(1, Ordering::Relaxed);
    }
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

    /// Wakes every waiting sync of every user (after changes whose users are not known,
    /// e.g. when notices from other processes may have been missed).
    pub fn notify_everyone(&self) {
        let map = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for n in map.values() {
            n.notify_waiters();
        }
    }

    /// Shutdown: wakes every waiting sync and makes later ones answer without waiting.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.notify_everyone();
    }

    /// Whether the server is shutting down (long-polls must not wait).
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Marks a long-poll of `user` as parked (waiting for a wake-up, nothing to send yet)
    /// until the guard is dropped.
    pub fn park(&self, user: &UserId) -> Parked<'_> {
        *self
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(user.to_owned())
            .or_default() += 1;
        self.parked_total.fetch_add(1, Ordering::Relaxed);
        Parked {
            notifier: self,
            user: user.to_owned(),
        }
    }

    /// How many long-polls of `user` are parked now.
    pub fn parked(&self, user: &UserId) -> usize {
        self.parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .copied()
            .unwrap_or(0)
    }

    /// How many long-polls are parked now, over all users.
    pub fn parked_total(&self) -> usize {
        self.parked_total.load(Ordering::Relaxed)
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

    #[test]
    fn parked_counts_follow_the_guards() {
        let n = Notifier::new();
        let alice: OwnedUserId = "@alice:x".try_into().unwrap();
        let first = n.park(&alice);
        let second = n.park(&alice);
        assert_eq!((n.parked(&alice), n.parked_total()), (2, 2));
        drop(first);
        assert_eq!(n.parked(&alice), 1);
        drop(second);
        assert_eq!((n.parked(&alice), n.parked_total()), (0, 0));
    }
}
