//! A user's push rules: their own (from `m.push_rules` account data, cached) or the
//! server default.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    push::{ConditionalPushRule, Ruleset},
    OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde_json::{json, Value};

use super::{PushService, PUSH_RULES_TYPE};
use crate::{
    rooms::{Membership, RoomMembers},
    Result,
};

/// Each user's own rules once read: `None` for the server default.
#[derive(Default)]
pub(super) struct RulesCache {
    users: HashMap<OwnedUserId, Option<Arc<Ruleset>>>,
    /// Changes of anyone's rules so far, here or by another process: what was read
    /// before one (a user's rules, a room's list) is not cached (it may be the old one).
    changes: u64,
    /// Per room, which of its members have rules of their own: every member who was
    /// joined or invited when it was built, and every one a membership event has named
    /// since (see [`PushService::note_member`]); some may have left. Cleared whenever
    /// anyone's rules change.
    rooms: HashMap<OwnedRoomId, Vec<OwnedUserId>>,
}

impl RulesCache {
    /// Drops the rules of these users (`None`: everybody's) after another process
    /// changed them.
    pub(super) fn changed_elsewhere(&mut self, users: Option<&[&UserId]>) {
        match users {
            Some(users) => {
                for user in users {
                    self.users.remove(*user);
                }
            }
            None => self.users.clear(),
        }
        self.changed();
    }

    /// Someone's rules changed: reads made before are not cached, and the rooms' lists
    /// of members with own rules are rebuilt.
    fn changed(&mut self) {
        self.rooms.clear();
        self.changes += 1;
    }
}

/// The user whose `m.push_rules` global account data is stored under `key` in the
/// `account_data` tree (`user, "", type`), if that is what the key holds.
pub(super) fn rules_owner(key: &[u8]) -> Option<&UserId> {
    let suffix = crate::storage::keys::strs(&["", PUSH_RULES_TYPE]);
    let user = key
        .strip_suffix(suffix.as_slice())?
        .strip_suffix(&[crate::storage::keys::SEP])?;
    <&UserId>::try_from(std::str::from_utf8(user).ok()?).ok()
}

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
        let changes = {
            let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            for (i, user) in users.iter().enumerate() {
                match rules.users.get(*user) {
                    Some(r) => found.push(r.clone()),
                    None => {
                        found.push(None);
                        missing.push(i);
                    }
                }
            }
            rules.changes
        };
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
            // A ruleset saved meanwhile is newer than what was read: it stays. What was
            // read while anyone's rules changed (here or elsewhere) is used once, not kept.
            let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            found[i] = if rules.changes == changes {
                rules.users.entry(user.to_owned()).or_insert(stored).clone()
            } else {
                stored
            };
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
        let changes = self.rules.lock().unwrap_or_else(|e| e.into_inner()).changes;
        self.users
            .set_account_data(user, None, PUSH_RULES_TYPE, content)
            .await?;
        // Rules may have changed meanwhile (another save, here or on another process):
        // then storage tells which are newest.
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        if rules.changes == changes {
            rules.users.insert(user.to_owned(), Some(Arc::new(ruleset)));
        } else {
            rules.users.remove(user);
        }
        rules.changed();
        Ok(())
    }

    /// The members of `room_id` who have rules of their own (some may have left since):
    /// read once per room from its joined and invited members, then kept up to date by
    /// [`PushService::note_member`], so an event the server default settles for everyone
    /// costs a look at these members only, not at every member.
    pub(super) fn members_with_own_rules(
        &self,
        room_id: &RoomId,
        members: &RoomMembers,
    ) -> Result<Vec<OwnedUserId>> {
        let changes = {
            let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(list) = rules.rooms.get(room_id) {
                return Ok(list.clone());
            }
            rules.changes
        };
        let everyone: Vec<&UserId> = members
            .joined()
            .chain(members.with(Membership::Invite))
            .collect();
        let list: Vec<OwnedUserId> = everyone
            .iter()
            .zip(self.custom_rulesets(&everyone)?)
            .filter(|(_, rules)| rules.is_some())
            .map(|(user, _)| (*user).to_owned())
            .collect();
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        if rules.changes == changes {
            rules.rooms.insert(room_id.to_owned(), list.clone());
        }
        Ok(list)
    }

    /// Notes that a membership event of `room_id` named `user`: if the room's list of
    /// members with own rules is kept and they have some, they join it.
    pub(super) fn note_member(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        let changes = {
            let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            match rules.rooms.get(room_id) {
                Some(list) if !list.iter().any(|u| u == user) => rules.changes,
                _ => return Ok(()),
            }
        };
        if self.custom_ruleset(user)?.is_none() {
            return Ok(());
        }
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let changes_now = rules.changes;
        match rules.rooms.get_mut(room_id) {
            Some(list) if changes_now == changes && !list.iter().any(|u| u == user) => {
                list.push(user.to_owned());
            }
            // Rebuilt meanwhile (from the current members) or already there.
            _ => {}
        }
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
