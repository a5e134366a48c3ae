//! Sync filters: stored per user under an id derived from their content, so a client
//! that uploads the same filter on every start gets the same id back.

use ruma::UserId;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::UsersService;
use crate::{storage::keys, Error, Result};

/// Largest accepted filter, serialised, in bytes.
const MAX_FILTER_LEN: usize = 64 * 1024;

impl UsersService {
    /// Stores a filter and returns its id; durable on return.
    pub async fn create_filter(&self, user: &UserId, filter: Value) -> Result<String> {
        if !filter.is_object() {
            return Err(Error::bad_json("A filter must be a JSON object"));
        }
        // serde_json maps are ordered, so equal filters serialise identically.
        let bytes = serde_json::to_vec(&filter)?;
        if bytes.len() > MAX_FILTER_LEN {
            return Err(Error::too_large("Filter is too large"));
        }
        let digest = Sha256::digest(&bytes);
        let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.storage
            .trees
            .filters
            .insert(&keys::strs(&[user.as_str(), &id]), &bytes)?;
        self.storage.durable().await?;
        Ok(id)
    }

    /// A filter of `user` by id.
    pub fn get_filter(&self, user: &UserId, id: &str) -> Result<Option<Value>> {
        if id.is_empty() || id.as_bytes().contains(&keys::SEP) {
            return Ok(None);
        }
        self.storage
            .trees
            .filters
            .get_json(&keys::strs(&[user.as_str(), id]))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::users::test_support::service;

    #[tokio::test]
    async fn filters_round_trip_per_user() {
        let s = service();
        let alice = s.create_user("alice", None, false).unwrap();
        let bob = s.create_user("bob", None, false).unwrap();
        let f = json!({"room": {"timeline": {"limit": 10}}});
        let id = s.create_filter(&alice, f.clone()).await.unwrap();
        assert_eq!(
            s.create_filter(&alice, f.clone()).await.unwrap(),
            id,
            "same filter, same id"
        );
        assert_eq!(s.get_filter(&alice, &id).unwrap(), Some(f));
        assert_eq!(s.get_filter(&bob, &id).unwrap(), None);
        assert_eq!(s.get_filter(&alice, "nope").unwrap(), None);
        assert_ne!(s.create_filter(&alice, json!({})).await.unwrap(), id);
        assert_eq!(
            s.create_filter(&alice, json!(1))
                .await
                .unwrap_err()
                .errcode(),
            "M_BAD_JSON"
        );
    }
}
