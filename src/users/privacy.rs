//! Privacy mode: global account data `io.myelin.privacy` `{"receipts": false}` makes a
//! user send no acknowledgements. Their `m.read` is kept as `m.read.private` (their own
//! unread counts still reset) and their typing notifications reach nobody. Switching it
//! back sends nothing retroactively: only later receipts and typing are public again.

use ruma::UserId;

use super::UsersService;
use crate::Result;

/// The global account-data type that holds a user's privacy settings.
pub const PRIVACY_ACCOUNT_DATA: &str = "io.myelin.privacy";

impl UsersService {
    /// Whether the user sends acknowledgements (receipts, typing) to others: true unless
    /// their `io.myelin.privacy` account data says `"receipts": false`.
    pub fn sends_acknowledgements(&self, user: &UserId) -> Result<bool> {
        let settings = self.get_account_data(user, None, PRIVACY_ACCOUNT_DATA)?;
        Ok(settings
            .as_ref()
            .and_then(|s| s.get("receipts"))
            .and_then(|v| v.as_bool())
            .unwrap_or(true))
    }

    /// The receipt type to record for a receipt of `kind` the user asked for: a public
    /// `m.read` becomes `m.read.private` in privacy mode.
    pub fn recorded_receipt_type<'a>(&self, user: &UserId, kind: &'a str) -> Result<&'a str> {
        if kind == "m.read" && !self.sends_acknowledgements(user)? {
            return Ok("m.read.private");
        }
        Ok(kind)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{config::Config, services::Services};

    #[tokio::test]
    async fn privacy_mode_turns_public_reads_private_until_switched_off() {
        let s = Services::in_memory(Config::default()).unwrap();
        let bob: ruma::OwnedUserId = "@bob:localhost".try_into().unwrap();
        assert!(s.users.sends_acknowledgements(&bob).unwrap());
        assert_eq!(
            s.users.recorded_receipt_type(&bob, "m.read").unwrap(),
            "m.read"
        );
        s.users
            .set_account_data(
                &bob,
                None,
                super::PRIVACY_ACCOUNT_DATA,
                json!({"receipts": false}),
            )
            .await
            .unwrap();
        assert!(!s.users.sends_acknowledgements(&bob).unwrap());
        assert_eq!(
            s.users.recorded_receipt_type(&bob, "m.read").unwrap(),
            "m.read.private"
        );
        assert_eq!(
            s.users
                .recorded_receipt_type(&bob, "m.read.private")
                .unwrap(),
            "m.read.private"
        );
        // A malformed value keeps the default rather than silencing the user.
        s.users
            .set_account_data(
                &bob,
                None,
                super::PRIVACY_ACCOUNT_DATA,
                json!({"receipts": "no"}),
            )
            .await
            .unwrap();
        assert!(s.users.sends_acknowledgements(&bob).unwrap());
        s.users
            .set_account_data(
                &bob,
                None,
                super::PRIVACY_ACCOUNT_DATA,
                json!({"receipts": true}),
            )
            .await
            .unwrap();
        assert_eq!(
            s.users.recorded_receipt_type(&bob, "m.read").unwrap(),
            "m.read"
        );
    }
}
