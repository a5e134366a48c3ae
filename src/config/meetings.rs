//! Meeting settings (`[meetings]`): join links, temporary participants and external
//! guests (see `crate::meetings`).

use serde::{Deserialize, Serialize};

/// Meeting settings (`[meetings]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeetingsConfig {
    /// Whether people without an account may join a meeting by link: `register?kind=guest`
    /// then works even when `registration.allow_guests` is off, and such guests may only
    /// take part in the meetings they joined by link.
    pub allow_external_guests: bool,
    /// Seconds a temporary participant may stay in the room without a call membership
    /// before the server removes them.
    pub temporary_idle_secs: u64,
}

impl Default for MeetingsConfig {
    fn default() -> Self {
        MeetingsConfig {
            allow_external_guests: true,
            temporary_idle_secs: 300,
        }
    }
}

impl MeetingsConfig {
    /// Applies `MYELIN_MEETINGS_*` overrides.
    pub(super) fn apply_env(
        &mut self,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        if let Some(v) = lookup("MYELIN_MEETINGS_ALLOW_EXTERNAL_GUESTS") {
            self.allow_external_guests = match v.as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                other => anyhow::bail!(
                    "MYELIN_MEETINGS_ALLOW_EXTERNAL_GUESTS={other}: expected true or false"
                ),
            };
        }
        if let Some(v) = lookup("MYELIN_MEETINGS_TEMPORARY_IDLE_SECS") {
            self.temporary_idle_secs = super::number("MYELIN_MEETINGS_TEMPORARY_IDLE_SECS", &v)?;
        }
        Ok(())
    }

    /// Checks the values.
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if self.temporary_idle_secs == 0 {
            anyhow::bail!("meetings.temporary_idle_secs must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_and_env() {
        let mut c = crate::config::Config::default();
        assert!(c.meetings.allow_external_guests);
        assert_eq!(c.meetings.temporary_idle_secs, 300);
        c.apply_env(|k| (k == "MYELIN_MEETINGS_ALLOW_EXTERNAL_GUESTS").then(|| "false".into()))
            .unwrap();
        assert!(!c.meetings.allow_external_guests);
        assert!(c
            .apply_env(|k| (k == "MYELIN_MEETINGS_ALLOW_EXTERNAL_GUESTS").then(|| "maybe".into()))
            .is_err());
        c.meetings.temporary_idle_secs = 0;
        assert!(c.validate().is_err());
        let c = crate::config::Config::from_toml("[meetings]\ntemporary_idle_secs = 5").unwrap();
        assert_eq!(c.meetings.temporary_idle_secs, 5);
    }
}
