//! Parsed sync filters, kept per distinct filter: a client repeats the same inline filter
//! (or filter id) on every long poll, so each is read and validated once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{api::client::filter::FilterDefinition, UserId};

use super::SyncFilter;
use crate::{users::UsersService, Error, Result};

/// Distinct filter definitions kept before that cache starts over.
const MAX_FILTERS: usize = 1024;
/// Stored filters kept by user and id before that cache starts over: one or two per
/// syncing user (every user of a company-wide room may long-poll at once), each sharing
/// its parsed definition with the users whose filter reads the same.
const MAX_STORED: usize = 65_536;

/// Parsed filters by inline text, and by user and id for stored ones (a stored filter
/// never changes).
pub(super) struct Filters {
    /// The filter of a request that names none (every section, default limits).
    none: Arc<SyncFilter>,
    inline: Mutex<HashMap<String, Arc<SyncFilter>>>,
    stored: Mutex<HashMap<String, Arc<SyncFilter>>>,
    /// Stored filters by definition, shared by the users who stored the same one.
    definitions: Mutex<HashMap<String, Arc<SyncFilter>>>,
}

impl Default for Filters {
    fn default() -> Filters {
        Filters {
            none: Arc::new(SyncFilter::from_json(&serde_json::json!({}))),
            inline: Mutex::default(),
            stored: Mutex::default(),
            definitions: Mutex::default(),
        }
    }
}

impl Filters {
    /// The filter a `/sync` names: none (defaults), an inline definition or the id of
    /// one of the user's stored filters.
    pub(super) fn resolve(
        &self,
        users: &UsersService,
        user: &UserId,
        filter: Option<&str>,
    ) -> Result<Arc<SyncFilter>> {
        let Some(text) = filter else {
            return Ok(self.none.clone());
        };
        if text.trim_start().starts_with('{') {
            if let Some(f) = lock(&self.inline).get(text) {
                return Ok(f.clone());
            }
            let parsed = Arc::new(SyncFilter::from_json(&parse_inline(text)?));
            insert(&self.inline, text.to_owned(), parsed.clone(), MAX_FILTERS);
            return Ok(parsed);
        }
        let key = format!("{user}\u{0}{text}");
        if let Some(f) = lock(&self.stored).get(&key) {
            return Ok(f.clone());
        }
        let stored = users
            .get_filter(user, text)?
            .ok_or_else(|| Error::not_found("Unknown filter"))?;
        let text = stored.to_string();
        let cached = lock(&self.definitions).get(&text).cloned();
        let parsed = match cached {
            Some(f) => f,
            None => {
                let parsed = Arc::new(SyncFilter::from_json(&stored));
                insert(&self.definitions, text, parsed.clone(), MAX_FILTERS);
                parsed
            }
        };
        insert(&self.stored, key, parsed.clone(), MAX_STORED);
        Ok(parsed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn insert(
    map: &Mutex<HashMap<String, Arc<SyncFilter>>>,
    key: String,
    f: Arc<SyncFilter>,
    max: usize,
) {
    let mut map = lock(map);
    if map.len() >= max {
        map.clear();
    }
    map.insert(key, f);
}

/// Reads an inline filter as a filter definition (as ruma types it), saying what is wrong
/// with one that is not.
fn parse_inline(text: &str) -> Result<serde_json::Value> {
    match serde_json::from_str::<FilterDefinition>(text) {
        Ok(def) => Ok(serde_json::to_value(&def)?),
        Err(e) if e.is_syntax() || e.is_eof() => Err(Error::not_json(format!(
            "The inline filter is not JSON: {e}"
        ))),
        Err(e) => Err(Error::bad_json(format!(
            "The inline filter is invalid: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::test_support::service;

    #[tokio::test]
    async fn filters_are_parsed_once_and_errors_say_what_is_wrong() {
        let users = service();
        let alice = users.create_user("alice", None, false).unwrap();
        let alice: &UserId = &alice;
        let filters = Filters::default();
        let text = r#"{"room":{"timeline":{"limit":3}}}"#;
        let a = filters.resolve(&users, alice, Some(text)).unwrap();
        let b = filters.resolve(&users, alice, Some(text)).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the second use is the cached one");
        assert_eq!(a.timeline.limit, Some(3));
        let none = filters.resolve(&users, alice, None).unwrap();
        assert_eq!(none.timeline.limit, None);
        assert!(
            none.ephemeral_enabled && none.presence_enabled && none.account_data_enabled,
            "no filter means every section"
        );
        let not_json = filters.resolve(&users, alice, Some("{nope")).unwrap_err();
        assert_eq!(not_json.errcode(), "M_NOT_JSON");
        let invalid = filters
            .resolve(&users, alice, Some(r#"{"room":{"timeline":{"limit":-1}}}"#))
            .unwrap_err();
        assert_eq!(invalid.errcode(), "M_BAD_JSON");
        let unknown = filters.resolve(&users, alice, Some("17")).unwrap_err();
        assert_eq!(unknown.errcode(), "M_NOT_FOUND");
        let id = users
            .create_filter(
                alice,
                serde_json::json!({"room": {"timeline": {"limit": 7}}}),
            )
            .await
            .unwrap();
        let stored = filters.resolve(&users, alice, Some(&id)).unwrap();
        assert_eq!(stored.timeline.limit, Some(7));
        assert!(Arc::ptr_eq(
            &stored,
            &filters.resolve(&users, alice, Some(&id)).unwrap()
        ));
        // Another user who stored the same definition shares its parse.
        let bob = users.create_user("bob", None, false).unwrap();
        let bob_id = users
            .create_filter(
                &bob,
                serde_json::json!({"room": {"timeline": {"limit": 7}}}),
            )
            .await
            .unwrap();
        let bobs = filters.resolve(&users, &bob, Some(&bob_id)).unwrap();
        assert!(Arc::ptr_eq(&stored, &bobs));
        assert_eq!(lock(&filters.stored).len(), 2, "kept per user and id");
    }
}
