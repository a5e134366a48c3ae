//! Server administration of accounts: listing and searching every account, the admin
//! flag, erasure and reactivation (the Synapse-compatible admin API's users part).

use std::cmp::Ordering;

use ruma::{OwnedUserId, UserId};

use super::{
    accounts::{hash_password, off_thread},
    Account, UsersService,
};
use crate::{storage::Batch, Error, Result};

/// One account as the admin API lists it.
#[derive(Clone, Debug)]
pub struct AccountSummary {
    /// The user id.
    pub user_id: OwnedUserId,
    /// The stored record.
    pub account: Account,
    /// The display name, if set.
    pub displayname: Option<String>,
    /// The avatar URL, if set.
    pub avatar_url: Option<String>,
    /// Newest `last_seen_ts` of the user's devices.
    pub last_seen_ts: Option<u64>,
}

/// What an account listing sorts by (Synapse's `order_by` names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccountOrder {
    /// The user id (default).
    #[default]
    Name,
    /// Guests last (first when reversed).
    IsGuest,
    /// Administrators last.
    Admin,
    /// Deactivated accounts last.
    Deactivated,
    /// The display name.
    Displayname,
    /// The avatar URL.
    AvatarUrl,
    /// Creation time.
    CreationTs,
    /// Last time a device was seen.
    LastSeenTs,
}

impl AccountOrder {
    /// Parses an `order_by` value (400 `M_INVALID_PARAM` for an unknown one).
    pub fn parse(s: &str) -> Result<AccountOrder> {
        Ok(match s {
            "name" => AccountOrder::Name,
            "is_guest" => AccountOrder::IsGuest,
            "admin" => AccountOrder::Admin,
            "deactivated" => AccountOrder::Deactivated,
            "displayname" => AccountOrder::Displayname,
            "avatar_url" => AccountOrder::AvatarUrl,
            "creation_ts" => AccountOrder::CreationTs,
            "last_seen_ts" => AccountOrder::LastSeenTs,
            other => {
                return Err(Error::invalid_param(format!(
                    "Unknown value for order_by: {other}"
                )))
            }
        })
    }

    fn compare(self, a: &AccountSummary, b: &AccountSummary) -> Ordering {
        let by = match self {
            AccountOrder::Name => Ordering::Equal,
            AccountOrder::IsGuest => a.account.guest.cmp(&b.account.guest),
            AccountOrder::Admin => a.account.admin.cmp(&b.account.admin),
            AccountOrder::Deactivated => a.account.deactivated.cmp(&b.account.deactivated),
            AccountOrder::Displayname => a.displayname.cmp(&b.displayname),
            AccountOrder::AvatarUrl => a.avatar_url.cmp(&b.avatar_url),
            AccountOrder::CreationTs => a.account.created_ts.cmp(&b.account.created_ts),
            AccountOrder::LastSeenTs => a.last_seen_ts.cmp(&b.last_seen_ts),
        };
        by.then_with(|| a.user_id.cmp(&b.user_id))
    }
}

/// Which accounts a listing returns and in what order.
#[derive(Clone, Debug)]
pub struct AccountQuery {
    /// Only accounts whose user id or display name contains this (case-insensitive).
    pub name: Option<String>,
    /// Include guests.
    pub guests: bool,
    /// Include deactivated accounts.
    pub deactivated: bool,
    /// Sort key.
    pub order: AccountOrder,
    /// Newest / largest first.
    pub backwards: bool,
}

impl Default for AccountQuery {
    fn default() -> Self {
        AccountQuery {
            name: None,
            guests: true,
            deactivated: false,
            order: AccountOrder::Name,
            backwards: false,
        }
    }
}

impl UsersService {
    /// The summary of one account, or `None` when `user` has none.
    pub fn account_summary(&self, user: &UserId) -> Result<Option<AccountSummary>> {
        let Some(account) = self.account(user)? else {
            return Ok(None);
        };
        let (displayname, avatar_url) = self.profile(user)?;
        let last_seen_ts = self
            .list_devices(user)?
            .iter()
            .filter_map(|d| d.last_seen_ts)
            .max();
        Ok(Some(AccountSummary {
            user_id: user.to_owned(),
            account,
            displayname,
            avatar_url,
            last_seen_ts,
        }))
    }

    /// Every account matching `query`, sorted: the admin API pages through it.
    pub fn list_accounts(&self, query: &AccountQuery) -> Result<Vec<AccountSummary>> {
        let needle = query.name.as_ref().map(|n| n.to_lowercase());
        let mut out = Vec::new();
        for entry in self.storage.trees.users.scan_prefix(&[]) {
            let (key, _) = entry?;
            let Ok(user) = UserId::parse(String::from_utf8_lossy(&key).as_ref()) else {
                continue;
            };
            let Some(summary) = self.account_summary(&user)? else {
                continue;
            };
            if (!query.guests && summary.account.guest)
                || (!query.deactivated && summary.account.deactivated)
            {
                continue;
            }
            if let Some(needle) = &needle {
                let in_id = user.as_str().to_lowercase().contains(needle);
                let in_name = summary
                    .displayname
                    .as_ref()
                    .is_some_and(|d| d.to_lowercase().contains(needle));
                if !in_id && !in_name {
                    continue;
                }
            }
            out.push(summary);
        }
        out.sort_by(|a, b| query.order.compare(a, b));
        if query.backwards {
            out.reverse();
        }
        Ok(out)
    }

    /// Grants or revokes server administration. Not yet durable.
    pub fn set_admin(&self, user: &UserId, admin: bool) -> Result<()> {
        self.update_account(user, |a| a.admin = admin)
    }

    /// Marks a (deactivated) account as erased. Not yet durable.
    pub fn mark_erased(&self, user: &UserId) -> Result<()> {
        self.update_account(user, |a| a.erased = true)
    }

    /// Reactivates a deactivated account with a new password (hashed on the blocking
    /// pool). Not yet durable.
    pub async fn reactivate(&self, user: &UserId, password: &str) -> Result<()> {
        super::check_password_policy(password)?;
        let password = password.to_owned();
        let hash = off_thread(move || hash_password(&password)).await??;
        self.update_account(user, |a| {
            a.deactivated = false;
            a.erased = false;
            a.password_hash = Some(hash);
        })
    }

    fn update_account(&self, user: &UserId, change: impl FnOnce(&mut Account)) -> Result<()> {
        let mut account = self
            .account(user)?
            .ok_or_else(|| Error::not_found("User not found"))?;
        change(&mut account);
        let mut batch = Batch::new();
        batch.insert_json(&self.storage.trees.users, user.as_bytes(), &account)?;
        self.storage.commit(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::test_support::service;

    #[test]
    fn listing_filters_searches_and_orders() {
        let s = service();
        let alice = s.create_user("alice", Some("pw"), true).unwrap();
        let bob = s.create_user("bob", Some("pw"), false).unwrap();
        let carol = s.create_user("carol", Some("pw"), false).unwrap();
        let guest = s.create_guest().unwrap();
        s.set_displayname(&bob, Some("Zed".into())).unwrap();
        s.deactivate(&carol).unwrap();
        let ids = |q: &AccountQuery| -> Vec<OwnedUserId> {
            s.list_accounts(q)
                .unwrap()
                .into_iter()
                .map(|a| a.user_id)
                .collect()
        };
        let all = AccountQuery::default();
        assert_eq!(ids(&all), vec![guest.clone(), alice.clone(), bob.clone()]);
        let no_guests = AccountQuery {
            guests: false,
            deactivated: true,
            ..AccountQuery::default()
        };
        assert_eq!(ids(&no_guests), vec![alice.clone(), bob.clone(), carol]);
        let by_name = AccountQuery {
            name: Some("zE".into()),
            ..AccountQuery::default()
        };
        assert_eq!(ids(&by_name), vec![bob.clone()]);
        let admins_first = AccountQuery {
            guests: false,
            order: AccountOrder::parse("admin").unwrap(),
            backwards: true,
            ..AccountQuery::default()
        };
        assert_eq!(ids(&admins_first), vec![alice, bob]);
        assert_eq!(
            AccountOrder::parse("password").unwrap_err().errcode(),
            "M_INVALID_PARAM"
        );
    }

    #[tokio::test]
    async fn admin_flag_and_reactivation() {
        let s = service();
        let bob = s.create_user("bob", Some("pw"), false).unwrap();
        s.set_admin(&bob, true).unwrap();
        assert!(s.is_admin(&bob).unwrap());
        s.deactivate(&bob).unwrap();
        s.mark_erased(&bob).unwrap();
        assert!(
            !s.is_admin(&bob).unwrap(),
            "deactivated accounts are not admins"
        );
        s.reactivate(&bob, "new").await.unwrap();
        let account = s.account(&bob).unwrap().unwrap();
        assert!(!account.deactivated && !account.erased);
        assert!(s.check_password(&bob, "new").unwrap());
        let nobody = s.user_id_from("nobody").unwrap();
        assert_eq!(
            s.set_admin(&nobody, true).unwrap_err().errcode(),
            "M_NOT_FOUND"
        );
    }
}
