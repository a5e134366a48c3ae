//! Access tokens resolved from memory. Every request looks its token up, and a token's
//! session never changes while the token lives (a new login on the device issues a new
//! token), so sessions read from storage are kept here, keyed by the token's hash.
//!
//! A revoked token must stop working the moment its removal is visible. A removal
//! therefore starts a [`Revocation`] before its batch is committed — the entry is
//! dropped and no lookup caches that token while the revocation lasts — and the
//! revocation ends when the batch has been applied (the batch holds it). A lookup that
//! read storage before the removal was applied and tries to cache afterwards is refused by
//! the revocation counter, which every ended revocation advances.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use super::Session;

/// Most sessions kept; when full, the cache starts over (the next requests read storage).
const CAPACITY: usize = 50_000;

/// A token's SHA-256 hash.
pub(super) type TokenHash = [u8; 32];

/// Sessions of recently used access tokens.
#[derive(Default)]
pub(super) struct TokenCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<TokenHash, Session>,
    /// Tokens whose removal is written but not applied yet, with how many removals.
    revoking: HashMap<TokenHash, usize>,
    /// Revocations ended so far.
    ended: u64,
}

/// A lookup's view of the cache: the session when cached, else the revocation count to
/// hand back to [`TokenCache::insert`].
pub(super) enum Lookup {
    Hit(Session),
    Miss { ended: u64 },
}

impl TokenCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map stays consistent even if a holder panicked: every change is one call.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached session of a token, or what an insert after a storage read needs.
    pub(super) fn get(&self, hash: &TokenHash) -> Lookup {
        let inner = self.lock();
        match inner.sessions.get(hash) {
            Some(session) => Lookup::Hit(session.clone()),
            None => Lookup::Miss { ended: inner.ended },
        }
    }

    /// Caches a session read from storage, unless a revocation of any token ended since
    /// the lookup (`ended`) or one of this token is under way.
    pub(super) fn insert(&self, hash: TokenHash, session: &Session, ended: u64) {
        let mut inner = self.lock();
        if inner.ended != ended || inner.revoking.contains_key(&hash) {
            return;
        }
        if inner.sessions.len() >= CAPACITY {
            inner.sessions.clear();
        }
        inner.sessions.insert(hash, session.clone());
    }

    /// Starts revoking a token: it leaves the cache and is not cached again until the
    /// returned guard is dropped, which must happen only after the removal was applied.
    pub(super) fn revoke(self: &Arc<Self>, hash: TokenHash) -> Revocation {
        let mut inner = self.lock();
        *inner.revoking.entry(hash).or_default() += 1;
        inner.sessions.remove(&hash);
        Revocation {
            cache: self.clone(),
            hash,
        }
    }

    /// Another process removed or wrote these tokens (each a [`TokenHash`]; other keys
    /// are ignored): their sessions leave the cache, and a lookup that read storage
    /// before the change caches nothing, as when a local revocation ends. `None`: any
    /// token may have changed.
    pub(super) fn changed_elsewhere(&self, hashes: Option<&[&[u8]]>) {
        let mut inner = self.lock();
        match hashes {
            Some(hashes) => {
                for hash in hashes {
                    if let Ok(hash) = TokenHash::try_from(*hash) {
                        inner.sessions.remove(&hash);
                    }
                }
            }
            None => inner.sessions.clear(),
        }
        inner.ended += 1;
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().sessions.len()
    }
}

/// A revocation under way (see [`TokenCache::revoke`]); held by the batch that removes
/// the token.
pub(super) struct Revocation {
    cache: Arc<TokenCache>,
    hash: TokenHash,
}

impl Drop for Revocation {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        if let Some(n) = inner.revoking.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                inner.revoking.remove(&self.hash);
            }
        }
        inner.sessions.remove(&self.hash);
        inner.ended += 1;
    }
}

#[cfg(test)]
mod tests {
    use ruma::{device_id, user_id};

    use super::*;

    fn session() -> Session {
        Session {
            user_id: user_id!("@alice:localhost").to_owned(),
            device_id: device_id!("DEV").to_owned(),
            is_guest: false,
            rate_limit_exempt: false,
            appservice: None,
        }
    }

    fn ended(cache: &TokenCache, hash: &TokenHash) -> u64 {
        match cache.get(hash) {
            Lookup::Miss { ended } => ended,
            Lookup::Hit(_) => panic!("expected a miss"),
        }
    }

    #[test]
    fn a_lookup_that_read_storage_before_a_revocation_caches_nothing() {
        let cache = Arc::new(TokenCache::default());
        let hash = [1; 32];
        // Read before the removal, cache attempt while it is under way.
        let seen = ended(&cache, &hash);
        let revocation = cache.revoke(hash);
        cache.insert(hash, &session(), seen);
        assert!(matches!(cache.get(&hash), Lookup::Miss { .. }));
        // ... and after it ended.
        drop(revocation);
        cache.insert(hash, &session(), seen);
        assert!(matches!(cache.get(&hash), Lookup::Miss { .. }));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_revocation_drops_the_cached_session() {
        let cache = Arc::new(TokenCache::default());
        let hash = [2; 32];
        let seen = ended(&cache, &hash);
        cache.insert(hash, &session(), seen);
        assert!(matches!(cache.get(&hash), Lookup::Hit(s) if s == session()));
        let revocation = cache.revoke(hash);
        assert!(matches!(cache.get(&hash), Lookup::Miss { .. }));
        drop(revocation);
        // Other tokens cache again once the revocation is over.
        let other = [3; 32];
        let seen = ended(&cache, &other);
        cache.insert(other, &session(), seen);
        assert!(matches!(cache.get(&other), Lookup::Hit(_)));
    }

    #[test]
    fn a_change_elsewhere_drops_the_session_and_refuses_earlier_reads() {
        let cache = TokenCache::default();
        let (hash, other) = ([4; 32], [5; 32]);
        let seen = ended(&cache, &hash);
        cache.insert(other, &session(), seen);
        // Read storage, then another process removed the token, then the cache attempt.
        cache.changed_elsewhere(Some(&[&hash[..], b"not a hash"]));
        cache.insert(hash, &session(), seen);
        assert!(matches!(cache.get(&hash), Lookup::Miss { .. }));
        assert!(matches!(cache.get(&other), Lookup::Hit(_)));
        cache.changed_elsewhere(None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_cache_starts_over_when_full() {
        let cache = TokenCache::default();
        for i in 0..CAPACITY as u32 + 1 {
            let mut hash = [0; 32];
            hash[..4].copy_from_slice(&i.to_be_bytes());
            cache.insert(hash, &session(), 0);
        }
        assert_eq!(cache.len(), 1);
    }
}
