//! OpenID tokens: short-lived proofs of identity a client hands to the SFU token service
//! (in this process) or to another server (`/_matrix/federation/v1/openid/userinfo`).
//! Stored only as SHA-256 hashes.

use rand::{distributions::Alphanumeric, Rng};
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use super::RtcService;
use crate::{
    storage::Batch,
    users::{now_ms, token_key},
    Error, Result,
};

/// Lifetime of an OpenID token in seconds.
pub const OPENID_TOKEN_TTL_SECS: u64 = 3600;

/// What an OpenID token proves.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenIdGrant {
    /// The user the token was issued to.
    pub user_id: OwnedUserId,
    /// The device that asked for it.
    pub device_id: OwnedDeviceId,
    /// Expiry, milliseconds since the epoch.
    pub expires_ms: u64,
}

/// The 401 every unknown, expired or foreign OpenID token gets.
pub fn unknown_openid_token() -> Error {
    Error::matrix(
        crate::ErrorKind::Unauthenticated,
        "M_UNKNOWN_TOKEN",
        "OpenID token unknown or expired",
    )
}

impl RtcService {
    /// Issues an OpenID token for `user`; returns it and its lifetime in seconds. Durable
    /// on return.
    pub async fn issue_openid_token(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<(String, u64)> {
        let token: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(40)
            .map(char::from)
            .collect();
        let grant = OpenIdGrant {
            user_id: user.to_owned(),
            device_id: device.to_owned(),
            expires_ms: now_ms() + OPENID_TOKEN_TTL_SECS * 1000,
        };
        let mut batch = Batch::new();
        batch.insert_json(
            &self.storage.trees.openid_tokens,
            &token_key(&token),
            &grant,
        )?;
        self.storage.commit(batch)?;
        self.storage.durable().await?;
        Ok((token, OPENID_TOKEN_TTL_SECS))
    }

    /// Who an OpenID token belongs to, or 401 `M_UNKNOWN_TOKEN` (also once the account is
    /// deactivated).
    pub fn openid_grant(&self, token: &str) -> Result<OpenIdGrant> {
        if token.is_empty() {
            return Err(unknown_openid_token());
        }
        let grant: Option<OpenIdGrant> = self
            .storage
            .trees
            .openid_tokens
            .get_json(&token_key(token))?;
        match grant {
            Some(g) if g.expires_ms > now_ms() && !self.users.is_deactivated(&g.user_id)? => Ok(g),
            _ => Err(unknown_openid_token()),
        }
    }

    /// Removes expired OpenID tokens; returns how many went.
    pub fn purge_expired_openid_tokens(&self) -> Result<usize> {
        let now = now_ms();
        let tree = &self.storage.trees.openid_tokens;
        let mut batch = Batch::new();
        let mut count = 0;
        for kv in tree.scan_prefix(&[]) {
            let (k, v) = kv?;
            let expired = serde_json::from_slice::<OpenIdGrant>(&v)
                .map(|g| g.expires_ms <= now)
                .unwrap_or(true);
            if expired {
                batch.remove(tree, &k);
                count += 1;
            }
        }
        self.storage.commit(batch)?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtc::tests::services;

    #[tokio::test]
    async fn issue_validate_expire() {
        let s = services();
        let alice = UserId::parse("@alice:localhost").unwrap();
        let device: OwnedDeviceId = "DEV".into();
        let (token, ttl) = s.rtc.issue_openid_token(&alice, &device).await.unwrap();
        assert_eq!(ttl, 3600);
        let grant = s.rtc.openid_grant(&token).unwrap();
        assert_eq!(grant.user_id, alice);
        assert_eq!(grant.device_id, device);
        assert_eq!(
            s.rtc.openid_grant("nope").unwrap_err().errcode(),
            "M_UNKNOWN_TOKEN"
        );
        assert!(s.rtc.openid_grant("").is_err());

        // Expire it by hand.
        let mut old = grant.clone();
        old.expires_ms = now_ms() - 1;
        let mut batch = Batch::new();
        batch
            .insert_json(&s.storage().trees.openid_tokens, &token_key(&token), &old)
            .unwrap();
        s.storage().commit(batch).unwrap();
        assert!(s.rtc.openid_grant(&token).is_err());
        assert_eq!(s.rtc.purge_expired_openid_tokens().unwrap(), 1);
        assert_eq!(s.rtc.purge_expired_openid_tokens().unwrap(), 0);
    }

    #[tokio::test]
    async fn deactivation_voids_openid_tokens() {
        let s = services();
        let bob = s.users.create_user("bob", Some("pw"), false).unwrap();
        let (token, _) = s.rtc.issue_openid_token(&bob, "D".into()).await.unwrap();
        assert!(s.rtc.openid_grant(&token).is_ok());
        s.users.deactivate(&bob).unwrap();
        assert_eq!(
            s.rtc.openid_grant(&token).unwrap_err().errcode(),
            "M_UNKNOWN_TOKEN"
        );
    }
}
