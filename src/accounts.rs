//! Account operations that span several domains: creating an account with its profile,
//! deactivating one (it leaves its rooms, loses its devices and pushers), changing a
//! profile (the member events of every joined room follow) and the administrators'
//! account changes. Each operation returns once all its writes are durable.

use std::sync::Arc;

use ruma::{DeviceId, OwnedUserId, UserId};

use crate::{
    push::PushService,
    rooms::{MemberProfile, RoomsService},
    storage::Storage,
    users::UsersService,
    Error, Result,
};

/// Who keeps a session when a password changes.
#[derive(Clone, Copy, Debug)]
pub enum KeepSessions<'a> {
    /// Every session stays.
    All,
    /// Only this device's session stays.
    Only(&'a DeviceId),
    /// Every session ends.
    None,
}

/// A profile change: `None` keeps a field, `Some(None)` clears it.
#[derive(Clone, Debug, Default)]
pub struct ProfileChange {
    pub displayname: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
}

impl ProfileChange {
    fn is_empty(&self) -> bool {
        self.displayname.is_none() && self.avatar_url.is_none()
    }
}

/// An administrator's change to an account (`PUT /_synapse/admin/v2/users/{userId}`),
/// already type-checked.
#[derive(Clone, Debug, Default)]
pub struct AccountChanges {
    pub password: Option<String>,
    /// With a new password: end every session.
    pub logout_devices: bool,
    pub profile: ProfileChange,
    pub admin: Option<bool>,
    pub deactivated: Option<bool>,
}

/// The account operations.
pub struct AccountsService {
    storage: Arc<Storage>,
    users: Arc<UsersService>,
    rooms: Arc<RoomsService>,
    push: Arc<PushService>,
}

impl AccountsService {
    pub fn new(
        storage: Arc<Storage>,
        users: Arc<UsersService>,
        rooms: Arc<RoomsService>,
        push: Arc<PushService>,
    ) -> Self {
        Self {
            storage,
            users,
            rooms,
            push,
        }
    }

    /// Creates an account with a password (hashed on the blocking pool) and its display
    /// name (the localpart when none is given); durable on return.
    pub async fn create(
        &self,
        localpart: &str,
        password: Option<&str>,
        admin: bool,
        displayname: Option<String>,
    ) -> Result<OwnedUserId> {
        let user = match password {
            Some(password) => {
                self.users
                    .create_user_off_thread(localpart, password, admin)
                    .await?
            }
            None => self.users.create_user(localpart, None, admin)?,
        };
        let displayname = displayname
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| user.localpart().to_owned());
        self.users.set_displayname(&user, Some(displayname))?;
        self.storage.durable().await?;
        Ok(user)
    }

    /// Creates a guest account (a generated numeric localpart); durable on return.
    pub async fn create_guest(&self) -> Result<OwnedUserId> {
        let user = self.users.create_guest()?;
        self.storage.durable().await?;
        Ok(user)
    }

    /// Replaces a password and ends the sessions `keep` does not keep; durable on
    /// return.
    pub async fn change_password(
        &self,
        user: &UserId,
        password: &str,
        keep: KeepSessions<'_>,
    ) -> Result<()> {
        self.users.set_password_off_thread(user, password).await?;
        match keep {
            KeepSessions::All => self.storage.durable().await,
            KeepSessions::Only(device) => self.users.logout_others(user, device).await,
            KeepSessions::None => self.users.logout_all(user).await,
        }
    }

    /// Changes a profile and copies it into the user's member events; durable on return.
    pub async fn set_profile(&self, user: &UserId, change: ProfileChange) -> Result<()> {
        if let Some(displayname) = change.displayname {
            self.users.set_displayname(user, displayname)?;
        }
        if let Some(avatar_url) = change.avatar_url {
            self.users.set_avatar_url(user, avatar_url)?;
        }
        let (displayname, avatar_url) = self.users.profile(user)?;
        self.rooms
            .update_profile_in_rooms(
                user,
                &MemberProfile {
                    displayname,
                    avatar_url,
                },
            )
            .await?;
        self.storage.durable().await
    }

    /// Grants or revokes server administration; durable on return.
    pub async fn set_admin(&self, user: &UserId, admin: bool) -> Result<()> {
        self.users.set_admin(user, admin)?;
        self.storage.durable().await
    }

    /// Deactivates an account: it leaves every room, loses its devices, tokens, profile
    /// and pushers; with `erase` it is also marked erased. Durable on return.
    pub async fn deactivate(&self, user: &UserId, erase: bool) -> Result<()> {
        self.rooms.leave_all_rooms(user).await?;
        self.users.deactivate(user)?;
        if erase {
            self.users.mark_erased(user)?;
        }
        self.push.delete_all_pushers(user)?;
        self.storage.durable().await
    }

    /// Creates an account from an administrator's `PUT` (display name: the localpart by
    /// default); durable on return.
    pub async fn admin_create(&self, user: &UserId, changes: AccountChanges) -> Result<()> {
        let admin = changes.admin == Some(true);
        let displayname = changes.profile.displayname.clone().flatten();
        self.create(
            user.as_str(),
            changes.password.as_deref(),
            admin,
            displayname,
        )
        .await?;
        if let Some(avatar_url) = changes.profile.avatar_url {
            self.users.set_avatar_url(user, avatar_url)?;
        }
        if changes.deactivated == Some(true) {
            return self.deactivate(user, false).await;
        }
        self.storage.durable().await
    }

    /// Changes an existing account from an administrator's `PUT`: reactivation needs a
    /// password; a deactivated account takes no other change. Durable on return.
    pub async fn admin_change(&self, user: &UserId, changes: AccountChanges) -> Result<()> {
        let account = self
            .users
            .account(user)?
            .ok_or_else(|| Error::not_found("User not found"))?;
        let reactivate = changes.deactivated == Some(false) && account.deactivated;
        if reactivate && changes.password.is_none() {
            return Err(Error::missing_param(
                "Must provide a password to re-activate an account",
            ));
        }
        if account.deactivated
            && !reactivate
            && (changes.password.is_some() || !changes.profile.is_empty())
        {
            return Err(Error::user_deactivated());
        }
        match &changes.password {
            Some(password) if reactivate => self.users.reactivate(user, password).await?,
            Some(password) => {
                let keep = if changes.logout_devices {
                    KeepSessions::None
                } else {
                    KeepSessions::All
                };
                self.change_password(user, password, keep).await?;
            }
            None => {}
        }
        if let Some(admin) = changes.admin {
            self.users.set_admin(user, admin)?;
        }
        if !changes.profile.is_empty() {
            self.set_profile(user, changes.profile).await?;
        }
        if changes.deactivated == Some(true) && !account.deactivated {
            return self.deactivate(user, false).await;
        }
        self.storage.durable().await
    }
}
