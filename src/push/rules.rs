//! A user's push rules: their own (from `m.push_rules` account data, cached) or the
//! server default.

use std::sync::Arc;

use ruma::{push::Ruleset, UserId};
use serde_json::{json, Value};

use super::{PushService, PUSH_RULES_TYPE};
use crate::Result;

impl PushService {
    /// A user's push rules.
    pub fn ruleset(&self, user: &UserId) -> Result<Arc<Ruleset>> {
        Ok(self
            .custom_ruleset(user)?
            .unwrap_or_else(|| Arc::new(Ruleset::server_default(user))))
    }

    /// The user's own rules, `None` when they use the server default.
    pub(super) fn custom_ruleset(&self, user: &UserId) -> Result<Option<Arc<Ruleset>>> {
        if let Some(r) = self
            .rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
        {
            return Ok(r.clone());
        }
        let stored = self
            .users
            .get_account_data(user, None, PUSH_RULES_TYPE)?
            .and_then(|c| serde_json::from_value::<Ruleset>(c["global"].clone()).ok())
            .map(Arc::new);
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.to_owned(), stored.clone());
        Ok(stored)
    }

    /// The `m.push_rules` account-data content of a user (for `/sync`).
    pub fn rules_content(&self, user: &UserId) -> Result<Value> {
        Ok(json!({ "global": *self.ruleset(user)? }))
    }

    /// Stores a changed ruleset (durable when this returns).
    pub async fn save_ruleset(&self, user: &UserId, ruleset: Ruleset) -> Result<()> {
        let content = json!({ "global": ruleset });
        self.users
            .set_account_data(user, None, PUSH_RULES_TYPE, content)
            .await?;
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.to_owned(), Some(Arc::new(ruleset)));
        Ok(())
    }
}
