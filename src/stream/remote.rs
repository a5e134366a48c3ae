//! Wake-ups for changes other processes commit to a shared database (several `myelin
//! serve` processes on one PostgreSQL database): such a change must wake this process's
//! long polls for the users it concerns, as a local write does.
//!
//! A service notes the users while its cache handlers see a notice's keys
//! ([`crate::storage::Storage::on_remote_change`]), and they are woken only once the
//! notice has moved the service's stream position: a sync woken before that would find
//! its token still current, park again and miss the change. The wake-up is a position
//! handler on the `meta` tree registered after the stream's [`StreamPosition`], so it
//! runs after the position was raised (handlers of one tree run in registration order).
//!
//! [`StreamPosition`]: crate::storage::StreamPosition

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, MutexGuard, Weak},
};

use ruma::{OwnedUserId, UserId};

use super::Notifier;
use crate::{
    storage::{Changed, Storage},
    Result,
};

/// Who else must hear about a user's change (e.g. everybody sharing a room with them,
/// for a device-list change); the user is woken too.
pub type RelatedFn = dyn Fn(&UserId) -> Result<BTreeSet<OwnedUserId>> + Send + Sync;

/// A boxed [`RelatedFn`].
pub type Related = Box<RelatedFn>;

/// The users to wake for the notice being handled, per stream.
#[derive(Default)]
pub struct RemoteWakes {
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// The newest position whose users were woken: a key at or below it is an older
    /// change being cleaned up (acknowledged, replaced), not news for anybody.
    announced: u64,
    /// The newest position among the users noted since the last wake-up.
    newest: u64,
    /// Users to wake.
    users: BTreeSet<OwnedUserId>,
    /// Users to wake with everybody related to them.
    related: BTreeSet<OwnedUserId>,
    /// Anything may have changed: wake every waiting sync.
    everyone: bool,
}

impl RemoteWakes {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Every change is one call: the sets stay consistent if a holder panicked.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes `user` for a change at stream position `pos` (unless an older one).
    pub fn user_at(&self, user: &UserId, pos: u64) {
        let mut pending = self.lock();
        if pos > pending.announced {
            pending.newest = pending.newest.max(pos);
            pending.users.insert(user.to_owned());
        }
    }

    /// Notes `user` for a change whose position the key does not tell.
    pub fn user(&self, user: &UserId) {
        self.lock().users.insert(user.to_owned());
    }

    /// Notes `user` and everybody related to them (see [`Related`]).
    pub fn related(&self, user: &UserId) {
        self.lock().related.insert(user.to_owned());
    }

    /// Notes that anything may have changed: every waiting sync is woken.
    pub fn everyone(&self) {
        self.lock().everyone = true;
    }

    /// From now on wakes the noted users each time another process moves the stream
    /// position stored under `position` in `meta`, just after the position moved. Call
    /// once, after loading that [`crate::storage::StreamPosition`]; `current` is its
    /// position then. Only for a shared database.
    pub fn register(
        self: &Arc<Self>,
        storage: &Storage,
        position: &'static [u8],
        current: u64,
        notifier: &Arc<Notifier>,
        related: Option<Related>,
    ) {
        self.lock().announced = current;
        let wakes: Weak<RemoteWakes> = Arc::downgrade(self);
        let notifier: Weak<Notifier> = Arc::downgrade(notifier);
        storage.on_remote_position(&storage.trees.meta, move |changed| {
            let moved = match changed {
                Changed::Keys(keys) => keys.contains(&position),
                Changed::All => true,
            };
            if !moved {
                return;
            }
            let (Some(wakes), Some(notifier)) = (wakes.upgrade(), notifier.upgrade()) else {
                return;
            };
            wakes.wake(&notifier, related.as_deref());
        });
    }

    /// Wakes everybody noted so far and forgets them.
    fn wake(&self, notifier: &Notifier, related: Option<&RelatedFn>) {
        let (mut users, to_expand, everyone) = {
            let mut pending = self.lock();
            pending.announced = pending.announced.max(pending.newest);
            (
                std::mem::take(&mut pending.users),
                std::mem::take(&mut pending.related),
                std::mem::take(&mut pending.everyone),
            )
        };
        if everyone {
            notifier.notify_everyone();
            return;
        }
        for user in to_expand {
            match related.map(|f| f(&user)) {
                Some(Ok(others)) => users.extend(others),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, user = %user, "who to wake for another process's change");
                }
                None => {}
            }
            users.insert(user);
        }
        notifier.notify(users.iter().map(|u| u.as_ref()));
    }
}

/// Helpers for tests of several processes on one database.
#[cfg(test)]
pub(crate) mod test_support {
    use std::{
        future::Future,
        time::{Duration, Instant},
    };

    use ruma::UserId;

    use super::Notifier;

    /// How long another process's change may take to show.
    pub(crate) const WAIT: Duration = Duration::from_secs(10);

    /// Waits until `check` holds, failing the test with `what` after [`WAIT`].
    pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check() {
            assert!(Instant::now() < deadline, "never happened: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A long poll of `user` on `notifier` while `write` runs, woken as a sync is: after
    /// each wake-up it looks whether `moved` holds, else waits again. Whether a wake-up
    /// found `moved` within [`WAIT`] (a change made visible without a wake-up after it
    /// is not seen, as by a sync).
    pub(crate) async fn woken_after(
        notifier: &Notifier,
        user: &UserId,
        write: impl Future<Output = ()>,
        moved: impl Fn() -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        let handle = notifier.handle(user);
        let mut notified = Box::pin(handle.notified());
        notified.as_mut().enable();
        write.await;
        loop {
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
            notified = Box::pin(handle.notified());
            notified.as_mut().enable();
            if moved() {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ruma::user_id;

    use super::*;

    #[test]
    fn older_positions_wake_nobody_and_related_users_are_expanded() {
        let wakes = RemoteWakes::default();
        wakes.lock().announced = 10;
        let (alice, bob, carol) = (
            user_id!("@alice:x"),
            user_id!("@bob:x"),
            user_id!("@carol:x"),
        );
        wakes.user_at(alice, 9);
        wakes.user_at(bob, 11);
        wakes.related(carol);
        let notifier = Notifier::new();
        let handles: Vec<_> = [alice, bob, carol]
            .iter()
            .map(|u| notifier.handle(u))
            .collect();
        let mut notified: Vec<_> = handles.iter().map(|h| Box::pin(h.notified())).collect();
        for n in &mut notified {
            n.as_mut().enable();
        }
        let related: Related = Box::new(|_| Ok(BTreeSet::from([alice.to_owned()])));
        wakes.wake(&notifier, Some(&*related));
        use futures_util::FutureExt;
        let woken: Vec<bool> = notified
            .into_iter()
            .map(|n| n.now_or_never().is_some())
            .collect();
        // Alice through carol, bob for his own change, carol herself.
        assert_eq!(woken, vec![true, true, true]);
        assert_eq!(wakes.lock().announced, 11);
        // Position 11 is announced now: the same key again is old news.
        wakes.user_at(bob, 11);
        assert!(wakes.lock().users.is_empty());
    }
}
