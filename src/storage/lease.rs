//! Leases: named, expiring claims that let one of several processes on a database run a
//! piece of background work. The holder renews its lease every third of the TTL; once it
//! stops, another process takes it over after expiry. One compare-and-swap on the `meta`
//! tree per step, so it works on every engine. Stored under `["lease", name]` as 16 bytes:
//! holder id, then expiry in unix ms, big-endian. Wall-clock time, as holders are separate
//! processes: their clocks must agree within a small fraction of the TTL (NTP), or one
//! whose clock runs ahead may take over a lease that is still being renewed.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{sync::watch, task::JoinHandle};

use super::{keys, Storage};
use crate::{Error, Result};

/// The stored form of a lease: holder id then expiry, big-endian.
fn encode(holder: u64, expires_at: u64) -> Vec<u8> {
    [holder.to_be_bytes(), expires_at.to_be_bytes()].concat()
}

/// Reads a stored lease as `(holder, expires_at)`. A value of any other shape reads as
/// `(0, 0)`, expired and held by nobody, so a corrupt record cannot stop the work for good.
fn decode(bytes: &[u8]) -> (u64, u64) {
    let fields = keys::leading_u64(bytes).zip(keys::trailing_u64(bytes));
    fields.filter(|_| bytes.len() == 16).unwrap_or_default()
}

/// The `meta` key of the lease `name`.
fn key(name: &str) -> Vec<u8> {
    keys::strs(&["lease", name])
}

/// Wall-clock time in unix milliseconds.
fn now_ms() -> Result<u64> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::internal("the system clock is set before 1970"))?;
    Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// This process's side of the leases: its holder id and the TTL of what it takes.
pub struct Leases {
    /// The database the leases are stored in.
    storage: Arc<Storage>,
    /// Random id of this process, written into every lease it holds.
    holder: u64,
    /// How long a lease lasts unless renewed.
    ttl: Duration,
    /// Whether this process is known to be the only one on the database.
    exclusive: bool,
}

impl Leases {
    /// Leases for this process with a new random holder id. `exclusive`: this process is
    /// known to be the only one on the database (today's case, enforced by the engines'
    /// locks), so a lease held by another holder id, expired or not, is a leftover of a
    /// previous run that was killed and may be taken at once.
    pub fn new(storage: Arc<Storage>, ttl: Duration, exclusive: bool) -> Leases {
        // 0 marks an unreadable record (see `decode`): never a holder.
        let holder = rand::random::<u64>().max(1);
        Leases {
            storage,
            holder,
            ttl,
            exclusive,
        }
    }

    /// This process's holder id.
    pub fn holder(&self) -> u64 {
        self.holder
    }

    /// How often a lease is renewed (and a waiting [`Leases::hold`] retries).
    fn period(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(1))
    }

    /// Writes our lease on `name` with a fresh expiry if `may` (given the current
    /// lease, if any, and the time) allows it: one read, then one compare-and-swap from
    /// what was read, so a concurrent change makes it return `Ok(false)`.
    fn write_if(
        &self,
        name: &str,
        may: impl FnOnce(Option<(u64, u64)>, u64) -> bool,
    ) -> Result<bool> {
        let tree = &self.storage.trees.meta;
        let key = key(name);
        let now = now_ms()?;
        let current = tree.get(&key)?;
        if !may(current.as_deref().map(decode), now) {
            return Ok(false);
        }
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let ours = encode(self.holder, now.saturating_add(ttl_ms));
        tree.compare_and_swap(&key, current.as_deref(), Some(ours))
    }

    /// Takes or renews `name` if it is free, expired, already ours, or this process is
    /// `exclusive`; returns whether we hold it now. A lost race returns `Ok(false)`.
    pub fn try_acquire(&self, name: &str) -> Result<bool> {
        self.write_if(name, |lease, now| {
            lease.is_none_or(|(h, expires)| self.exclusive || h == self.holder || expires <= now)
        })
    }

    /// Whether `name` is held (by any holder, this process included) and not expired.
    pub fn is_held(&self, name: &str) -> Result<bool> {
        let now = now_ms()?;
        Ok(self
            .storage
            .trees
            .meta
            .get(&key(name))?
            .is_some_and(|bytes| {
                let (holder, expires) = decode(&bytes);
                holder != 0 && expires > now
            }))
    }

    /// Gives `name` up if we hold it; a lease held by another holder is left alone.
    pub fn release(&self, name: &str) -> Result<()> {
        let tree = &self.storage.trees.meta;
        let key = key(name);
        if let Some(bytes) = tree.get(&key)? {
            if decode(&bytes).0 == self.holder {
                // A lost race means another holder took it meanwhile: not ours to remove.
                tree.compare_and_swap(&key, Some(&bytes), None)?;
            }
        }
        Ok(())
    }

    /// Waits (retrying every third of the TTL) until `name` is ours, then returns a guard
    /// that renews it in a task until dropped. A storage error while waiting is returned.
    /// One guard per name per process: two would share the holder id and the lease.
    pub async fn hold(self: &Arc<Self>, name: &str) -> Result<LeaseGuard> {
        let mut taken = Instant::now();
        while !self.try_acquire(name)? {
            tokio::time::sleep(self.period()).await;
            taken = Instant::now();
        }
        let held = Arc::new(Held {
            leases: self.clone(),
            name: name.to_owned(),
            released: Mutex::new(false),
        });
        let (lost_tx, lost) = watch::channel(false);
        let task = tokio::spawn(held.clone().renew(taken, lost_tx));
        Ok(LeaseGuard { held, lost, task })
    }
}

/// What a guard and its renewal task share.
struct Held {
    /// The leases it was taken with.
    leases: Arc<Leases>,
    /// The lease's name.
    name: String,
    /// Set (under its lock) when the guard is dropped: the renewal task stops writing.
    released: Mutex<bool>,
}

impl Held {
    /// Renews the lease every third of the TTL until the guard is dropped or the lease is
    /// lost, then sets `lost`. Lost: another holder took it (a renewal never takes a
    /// lease, even when `exclusive`), or a renewal failed and the lease would expire (by
    /// our own clock, from the last write) before the next try.
    async fn renew(self: Arc<Self>, taken: Instant, lost: watch::Sender<bool>) {
        let (leases, name) = (&self.leases, &self.name);
        let period = leases.period();
        let mut expires = taken + leases.ttl;
        loop {
            tokio::time::sleep(period).await;
            let attempt = Instant::now();
            let renewed = {
                // Held across the write, so a dropped guard's release cannot precede it.
                let released = self.released.lock().unwrap_or_else(PoisonError::into_inner);
                if *released {
                    return;
                }
                leases.write_if(name, |l, _| l.is_some_and(|(h, _)| h == leases.holder))
            };
            match renewed {
                Ok(true) => expires = attempt + leases.ttl,
                Ok(false) => break tracing::warn!(lease = %name, "lease taken by another holder"),
                Err(e) if Instant::now() + period >= expires => {
                    break tracing::error!(lease = %name, error = %e, "lease renewal failed, lost");
                }
                Err(e) => tracing::warn!(lease = %name, error = %e, "lease renewal failed"),
            }
        }
        lost.send_replace(true);
    }
}

/// A lease held by this process, renewed in the background; released when dropped.
pub struct LeaseGuard {
    /// The lease and its holder.
    held: Arc<Held>,
    /// Whether the lease has been lost.
    lost: watch::Receiver<bool>,
    /// The renewal task.
    task: JoinHandle<()>,
}

impl LeaseGuard {
    /// Turns true once the lease is lost (see `Held::renew`); the work it guards must
    /// then stop. Wait with `wait_for(|lost| *lost)`, which also sees an earlier change.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }
}

impl Drop for LeaseGuard {
    /// Stops the renewals and releases the lease if it is still ours.
    fn drop(&mut self) {
        self.task.abort();
        let held = &self.held;
        let mut released = held.released.lock().unwrap_or_else(PoisonError::into_inner);
        *released = true;
        if let Err(e) = held.leases.release(&held.name) {
            tracing::warn!(lease = %held.name, error = %e, "releasing a lease failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leases with a new holder id on `storage`.
    fn leases(storage: &Arc<Storage>, ttl_ms: u64, exclusive: bool) -> Arc<Leases> {
        let ttl = Duration::from_millis(ttl_ms);
        Arc::new(Leases::new(storage.clone(), ttl, exclusive))
    }

    /// Two holders on one storage: one wins; the other waits in `hold` until it lets go.
    async fn two_holders(storage: Arc<Storage>, other: Arc<Storage>) {
        let a = leases(&storage, 60_000, false);
        // b's TTL is long enough that a renewal delayed by a loaded machine (CI runs
        // many tests on two cores) still lands before expiry; the wait below outlasts it.
        let b = leases(&other, 2_000, false);
        assert_ne!(a.holder(), b.holder());
        assert!(!a.is_held("work").unwrap());
        assert!(a.try_acquire("work").unwrap());
        assert!(a.is_held("work").unwrap() && b.is_held("work").unwrap());
        assert!(!b.try_acquire("work").unwrap());
        assert!(a.try_acquire("work").unwrap(), "the holder renews");

        let waiting = tokio::spawn(async move { b.hold("work").await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished());
        a.release("work").unwrap();
        let guard = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        let guard = guard.unwrap().unwrap().unwrap();
        // Renewals keep it past its TTL.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(!a.try_acquire("work").unwrap());
        assert!(!*guard.lost().borrow());
        drop(guard);
        assert!(a.try_acquire("work").unwrap(), "dropped, released");
    }

    #[tokio::test]
    async fn two_holders_in_memory() {
        let storage = Arc::new(Storage::in_memory());
        two_holders(storage.clone(), storage).await;
    }

    /// Two processes sharing one PostgreSQL database, each with its own storage.
    #[tokio::test]
    async fn two_holders_on_postgres() {
        let url = super::super::postgres_engine::test_database();
        let first = Arc::new(Storage::open_postgres_shared(&url, 2).unwrap());
        let second = Arc::new(Storage::open_postgres_shared(&url, 2).unwrap());
        two_holders(first, second).await;
    }

    #[test]
    fn expired_unreadable_or_leftover_leases_are_taken_over() {
        let storage = Arc::new(Storage::in_memory());
        let a = leases(&storage, 200, false);
        let b = leases(&storage, 60_000, false);
        assert!(a.try_acquire("work").unwrap());
        assert!(!b.try_acquire("work").unwrap());
        std::thread::sleep(Duration::from_millis(250));
        assert!(b.try_acquire("work").unwrap(), "expired");
        assert!(!a.try_acquire("work").unwrap());

        storage.trees.meta.insert(&key("work"), b"junk").unwrap();
        assert!(a.try_acquire("work").unwrap(), "unreadable");

        let restarted = leases(&storage, 60_000, true);
        assert!(restarted.try_acquire("work").unwrap(), "exclusive, live");
        assert!(!a.try_acquire("work").unwrap());
    }

    #[tokio::test]
    async fn a_guard_sees_its_lease_taken_and_leaves_it_alone() {
        let storage = Arc::new(Storage::in_memory());
        // Exclusive: even so, a renewal never takes the lease back.
        let leases = leases(&storage, 300, true);
        let guard = leases.hold("work").await.unwrap();
        let mut lost = guard.lost();
        let thief = encode(!leases.holder(), now_ms().unwrap() + 60_000);
        let meta = &storage.trees.meta;
        meta.insert(&key("work"), &thief).unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), lost.wait_for(|l| *l)).await;
        assert!(*seen.unwrap().unwrap());
        drop(guard);
        assert_eq!(meta.get(&key("work")).unwrap(), Some(thief));
    }
}
