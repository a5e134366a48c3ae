//! Group settings (`[groups]`): groups are the small, short-lived rooms of the corporate
//! model (`io.myelin.group`, see `rooms::kinds`).

use serde::{Deserialize, Serialize};

/// Group settings (`[groups]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Most users a group holds, joined plus invited: the invite, join or knock that
    /// would go over gets 403 `M_FORBIDDEN`.
    pub max_members: usize,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig { max_members: 5 }
    }
}

impl GroupsConfig {
    /// Applies `MYELIN_GROUPS_*` overrides.
    pub(super) fn apply_env(
        &mut self,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        if let Some(v) = lookup("MYELIN_GROUPS_MAX_MEMBERS") {
            self.max_members = super::number("MYELIN_GROUPS_MAX_MEMBERS", &v)?;
        }
        Ok(())
    }

    /// Checks the values.
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if self.max_members == 0 {
            anyhow::bail!("groups.max_members must be at least 1 (the creator)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_and_env() {
        let mut c = crate::config::Config::default();
        assert_eq!(c.groups.max_members, 5);
        c.apply_env(|k| (k == "MYELIN_GROUPS_MAX_MEMBERS").then(|| "3".into()))
            .unwrap();
        assert_eq!(c.groups.max_members, 3);
        assert!(c
            .apply_env(|k| (k == "MYELIN_GROUPS_MAX_MEMBERS").then(|| "many".into()))
            .is_err());
        c.groups.max_members = 0;
        assert!(c.validate().is_err());
        let c = crate::config::Config::from_toml("[groups]\nmax_members = 8").unwrap();
        assert_eq!(c.groups.max_members, 8);
    }
}
