//! What other processes sharing the database change in the users service's memory (see
//! [`crate::storage::remote`]): the token cache, the account-data and presence change
//! indexes, and the wake-ups of the users concerned (account data, presence, thread
//! subscriptions), all as a local write does them.

use std::sync::{Arc, Mutex};

use ruma::UserId;

use super::{
    account_data::{self, split_log_key},
    presence::{self, PresenceRecord},
    token_cache::TokenCache,
    USERDATA_POS_KEY,
};
use crate::{
    storage::{keys, Changed, Storage},
    stream::RemoteWakes,
};

/// The in-memory state the handlers keep up to date.
pub(super) struct Watched<'a> {
    /// Sessions of access tokens.
    pub token_cache: &'a Arc<TokenCache>,
    /// Newest account-data change per user.
    pub account_data: &'a Arc<Mutex<account_data::ChangeIndex>>,
    /// Newest presence change per user.
    pub presence: &'a Arc<Mutex<presence::ChangeIndex>>,
    /// Users to wake once the user-data position moved.
    pub wakes: &'a Arc<RemoteWakes>,
}

/// Registers the handlers of the users service's trees (before anything they maintain
/// is read). Only for a shared database.
pub(super) fn watch(storage: &Storage, watched: Watched<'_>) {
    let trees = &storage.trees;

    let cache = Arc::downgrade(watched.token_cache);
    storage.on_remote_change(&trees.tokens, move |changed| {
        if let Some(cache) = cache.upgrade() {
            cache.changed_elsewhere(match changed {
                Changed::Keys(keys) => Some(keys),
                Changed::All => None,
            });
        }
    });

    let index = Arc::downgrade(watched.account_data);
    let wakes = Arc::downgrade(watched.wakes);
    let meta = trees.meta.downgrade();
    storage.on_remote_change(&trees.account_data_log, move |changed| {
        let (Some(index), Some(wakes)) = (index.upgrade(), wakes.upgrade()) else {
            return;
        };
        let mut index = index.lock().unwrap_or_else(|e| e.into_inner());
        match changed {
            Changed::Keys(keys) => {
                for (user, pos) in keys.iter().filter_map(|k| split_log_key(k)) {
                    index.record(&user, pos);
                    wakes.user_at(&user, pos);
                }
            }
            Changed::All => {
                // Changes up to the stored position may be missing: every user's account
                // data is read again for tokens before it.
                let pos = match meta.get(USERDATA_POS_KEY) {
                    Some(Ok(v)) => v.as_deref().and_then(keys::leading_u64).unwrap_or(0),
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "reading the user-data position");
                        u64::MAX
                    }
                    None => return,
                };
                index.restart_at(pos);
                wakes.everyone();
            }
        }
    });

    let wakes = Arc::downgrade(watched.wakes);
    storage.on_remote_change(&trees.thread_subscription_log, move |changed| {
        let Some(wakes) = wakes.upgrade() else { return };
        match changed {
            Changed::Keys(keys) => {
                for (user, pos) in keys.iter().filter_map(|k| split_log_key(k)) {
                    wakes.user_at(&user, pos);
                }
            }
            Changed::All => wakes.everyone(),
        }
    });

    let index = Arc::downgrade(watched.presence);
    let wakes = Arc::downgrade(watched.wakes);
    let records = trees.presence.downgrade();
    storage.on_remote_change(&trees.presence, move |changed| {
        let (Some(index), Some(wakes)) = (index.upgrade(), wakes.upgrade()) else {
            return;
        };
        let Changed::Keys(keys) = changed else {
            index.lock().unwrap_or_else(|e| e.into_inner()).mark_stale();
            wakes.everyone();
            return;
        };
        for key in keys {
            let Some(user) = std::str::from_utf8(key)
                .ok()
                .and_then(|u| UserId::parse(u).ok())
            else {
                continue;
            };
            // The position is in the value; what is read may be newer still, which is
            // as good.
            match presence_pos(records.get(key)) {
                Ok(Some(pos)) => {
                    index
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(&user, pos);
                    wakes.user_at(&user, pos);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, user = %user, "reading a presence record another process wrote");
                    index.lock().unwrap_or_else(|e| e.into_inner()).mark_stale();
                    wakes.user(&user);
                }
            }
        }
    });
}

/// The position of a presence record just read (`None`: no record, or the database is
/// closed).
fn presence_pos(read: Option<crate::Result<Option<Vec<u8>>>>) -> crate::Result<Option<u64>> {
    Ok(match read.transpose()?.flatten() {
        Some(bytes) => serde_json::from_slice::<PresenceRecord>(&bytes)
            .ok()
            .map(|r| r.pos),
        None => None,
    })
}
