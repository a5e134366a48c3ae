//! Profiles: display name and avatar URL.

use ruma::UserId;
use serde::{Deserialize, Serialize};

use super::UsersService;
use crate::{storage::Batch, Error, Result};

/// Longest accepted display name in bytes.
const MAX_DISPLAYNAME_LEN: usize = 256;
/// Longest accepted avatar URL in bytes.
const MAX_AVATAR_URL_LEN: usize = 1024;

/// The stored profile.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    displayname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    avatar_url: Option<String>,
}

/// Checks a display name (at most 256 bytes) and an avatar URL (an `mxc://` URI) before
/// they are stored: 400 `M_INVALID_PARAM` otherwise. Empty values clear and pass.
pub fn check_profile(displayname: Option<&str>, avatar_url: Option<&str>) -> Result<()> {
    if displayname.is_some_and(|d| d.len() > MAX_DISPLAYNAME_LEN) {
        return Err(Error::invalid_param(format!(
            "displayname is longer than {MAX_DISPLAYNAME_LEN} bytes"
        )));
    }
    if let Some(url) = avatar_url.filter(|a| !a.is_empty()) {
        if !url.starts_with("mxc://") || url.len() > MAX_AVATAR_URL_LEN {
            return Err(Error::invalid_param("avatar_url must be an mxc:// URI"));
        }
    }
    Ok(())
}

impl UsersService {
    /// `(displayname, avatar_url)` of `user`; both `None` when unset or unknown.
    pub fn profile(&self, user: &UserId) -> Result<(Option<String>, Option<String>)> {
        let p: Profile = self
            .storage
            .trees
            .profiles
            .get_json(user.as_bytes())?
            .unwrap_or_default();
        Ok((p.displayname, p.avatar_url))
    }

    /// Sets (or with `None`/empty clears) the display name. Not yet durable.
    pub fn set_displayname(&self, user: &UserId, displayname: Option<String>) -> Result<()> {
        let displayname = displayname.filter(|d| !d.is_empty());
        check_profile(displayname.as_deref(), None)?;
        self.update_profile(user, |p| p.displayname = displayname)
    }

    /// Sets (or with `None`/empty clears) the avatar URL, which must be an `mxc://` URI.
    /// Not yet durable.
    pub fn set_avatar_url(&self, user: &UserId, avatar_url: Option<String>) -> Result<()> {
        let avatar_url = avatar_url.filter(|a| !a.is_empty());
        check_profile(None, avatar_url.as_deref())?;
        self.update_profile(user, |p| p.avatar_url = avatar_url)
    }

    fn update_profile(&self, user: &UserId, change: impl FnOnce(&mut Profile)) -> Result<()> {
        if !self.exists(user)? || self.is_deactivated(user)? {
            return Err(Error::not_found("Unknown user"));
        }
        let mut profile: Profile = self
            .storage
            .trees
            .profiles
            .get_json(user.as_bytes())?
            .unwrap_or_default();
        change(&mut profile);
        let mut batch = Batch::new();
        batch.insert_json(&self.storage.trees.profiles, user.as_bytes(), &profile)?;
        self.storage.commit(batch)
    }
}

#[cfg(test)]
mod tests {
    use crate::users::test_support::service;

    #[test]
    fn set_and_clear_profile_fields() {
        let s = service();
        let alice = s.create_user("alice", None, false).unwrap();
        assert_eq!(s.profile(&alice).unwrap(), (None, None));
        s.set_displayname(&alice, Some("Alice".into())).unwrap();
        s.set_avatar_url(&alice, Some("mxc://localhost/abc".into()))
            .unwrap();
        assert_eq!(
            s.profile(&alice).unwrap(),
            (Some("Alice".into()), Some("mxc://localhost/abc".into()))
        );
        assert_eq!(
            s.set_avatar_url(&alice, Some("http://x".into()))
                .unwrap_err()
                .errcode(),
            "M_INVALID_PARAM"
        );
        s.set_displayname(&alice, None).unwrap();
        assert_eq!(s.profile(&alice).unwrap().0, None);
        let ghost = s.user_id_from("ghost").unwrap();
        assert_eq!(
            s.set_displayname(&ghost, Some("G".into()))
                .unwrap_err()
                .errcode(),
            "M_NOT_FOUND"
        );
    }
}
