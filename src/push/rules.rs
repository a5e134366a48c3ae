//! A user's push rules: their own (from `m.push_rules` account data, cached) or the
//! server default.

use std::sync::Arc;

use ruma::{
    push::{ConditionalPushRule, Ruleset},
    UserId,
};
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
        Ok(self.custom_rulesets(&[user])?.pop().flatten())
    }

    /// The own rules of each of `users`, in order (`None` for the server default): one
    /// lock for the users already read, storage only for the others.
    pub(super) fn custom_rulesets(&self, users: &[&UserId]) -> Result<Vec<Option<Arc<Ruleset>>>> {
        let mut found = Vec::with_capacity(users.len());
        let mut missing = Vec::new();
        {
            let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            for (i, user) in users.iter().enumerate() {
                match rules.get(*user) {
                    Some(r) => found.push(r.clone()),
                    None => {
                        found.push(None);
                        missing.push(i);
                    }
                }
            }
        }
        for i in missing {
            let user = users[i];
            let stored = self
                .users
                .get_account_data(user, None, PUSH_RULES_TYPE)?
                .and_then(|c| serde_json::from_value::<Ruleset>(c["global"].clone()).ok())
                .map(|mut ruleset| {
                    with_current_postcontent(&mut ruleset, user);
                    Arc::new(ruleset)
                });
            // A ruleset saved meanwhile is newer than what was read: it stays.
            found[i] = self
                .rules
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(user.to_owned())
                .or_insert(stored)
                .clone();
        }
        Ok(found)
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

/// Gives a user's stored rules the server's current `postcontent` rules (MSC4306's thread
/// rules), which rules stored before the server had them lack: each in the server's order,
/// keeping the `enabled` and `actions` the user set on it. Clients cannot add their own
/// rules of this kind, so nothing else is kept.
pub(super) fn with_current_postcontent(ruleset: &mut Ruleset, user: &UserId) {
    let stored = std::mem::take(&mut ruleset.postcontent);
    ruleset.postcontent = Ruleset::server_default(user)
        .postcontent
        .into_iter()
        .map(|mut rule: ConditionalPushRule| {
            if let Some(own) = stored.get(rule.rule_id.as_str()) {
                rule.enabled = own.enabled;
                rule.actions = own.actions.clone();
            }
            rule
        })
        .collect();
}

#[cfg(test)]
mod tests {
    use ruma::{push::RuleKind, user_id};

    use super::*;

    #[test]
    fn stored_rules_get_the_thread_rules_and_keep_their_switches() {
        let user = user_id!("@alice:example.org");
        let mut old = Ruleset::server_default(user);
        old.postcontent.clear();
        with_current_postcontent(&mut old, user);
        let ids: Vec<&str> = old.postcontent.iter().map(|r| r.rule_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                ".io.element.msc4306.rule.unsubscribed_thread",
                ".io.element.msc4306.rule.subscribed_thread"
            ]
        );
        old.set_enabled(
            RuleKind::PostContent,
            ".io.element.msc4306.rule.unsubscribed_thread",
            false,
        )
        .expect("a server-default rule");
        with_current_postcontent(&mut old, user);
        assert!(!old.postcontent[0].enabled);
        assert!(old.postcontent[1].enabled);
    }
}
