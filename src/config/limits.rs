//! Rate limits (`[rate_limits]`) and connection limits (`[limits]`).

use serde::{Deserialize, Serialize};

/// One token bucket: refilled at `per_second` tokens a second, holding at most `burst`.
/// Each request of the action takes a token; without one it gets 429 `M_LIMIT_EXCEEDED`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate; 0 turns this limit off.
    pub per_second: f64,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
}

impl RateLimit {
    const fn new(per_second: f64, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }
}

/// Rate limits per action (`[rate_limits]`). Limits keyed by client address use the
/// socket's peer address, or the `X-Forwarded-For` address a trusted proxy reports.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Whether any rate limit applies.
    pub enabled: bool,
    /// Reverse proxies (CIDR, e.g. `127.0.0.1/32`) whose `X-Forwarded-For` header names
    /// the client; empty = the peer address is the client.
    pub trusted_proxies: Vec<String>,
    /// Login attempts per client address.
    pub login: RateLimit,
    /// Login attempts per account (whoever makes them).
    pub login_account: RateLimit,
    /// Registrations (guests included) per client address.
    pub register: RateLimit,
    /// Events sent per user.
    pub send: RateLimit,
    /// Rooms created per user.
    pub create_room: RateLimit,
    /// Media uploads per user.
    pub upload: RateLimit,
    /// Thumbnail requests per user (per client address on the unauthenticated paths).
    pub thumbnail: RateLimit,
    /// Joins through an invite link per user (for the join-by-link endpoint).
    pub join_by_link: RateLimit,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            enabled: true,
            trusted_proxies: Vec::new(),
            login: RateLimit::new(0.5, 10),
            login_account: RateLimit::new(0.1, 5),
            register: RateLimit::new(0.17, 5),
            send: RateLimit::new(5.0, 50),
            create_room: RateLimit::new(0.5, 10),
            upload: RateLimit::new(2.0, 20),
            thumbnail: RateLimit::new(20.0, 100),
            join_by_link: RateLimit::new(0.1, 10),
        }
    }
}

impl RateLimitsConfig {
    /// Each limit with its config name.
    pub fn named(&self) -> [(&'static str, RateLimit); 8] {
        [
            ("login", self.login),
            ("login_account", self.login_account),
            ("register", self.register),
            ("send", self.send),
            ("create_room", self.create_room),
            ("upload", self.upload),
            ("thumbnail", self.thumbnail),
            ("join_by_link", self.join_by_link),
        ]
    }

    fn named_mut(&mut self) -> [(&'static str, &mut RateLimit); 8] {
        [
            ("login", &mut self.login),
            ("login_account", &mut self.login_account),
            ("register", &mut self.register),
            ("send", &mut self.send),
            ("create_room", &mut self.create_room),
            ("upload", &mut self.upload),
            ("thumbnail", &mut self.thumbnail),
            ("join_by_link", &mut self.join_by_link),
        ]
    }

    /// Applies `MYELIN_RATE_LIMITS_ENABLED`, `MYELIN_RATE_LIMITS_TRUSTED_PROXIES` (comma
    /// separated) and `MYELIN_RATE_LIMITS_<ACTION>_PER_SECOND` / `_BURST`.
    pub(super) fn apply_env(
        &mut self,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        if let Some(v) = lookup("MYELIN_RATE_LIMITS_ENABLED") {
            self.enabled = super::boolean("MYELIN_RATE_LIMITS_ENABLED", &v)?;
        }
        if let Some(v) = lookup("MYELIN_RATE_LIMITS_TRUSTED_PROXIES") {
            self.trusted_proxies = v
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
        }
        for (name, limit) in self.named_mut() {
            let upper = name.to_ascii_uppercase();
            let key = format!("MYELIN_RATE_LIMITS_{upper}_PER_SECOND");
            if let Some(v) = lookup(&key) {
                limit.per_second = super::number(&key, &v)?;
            }
            let key = format!("MYELIN_RATE_LIMITS_{upper}_BURST");
            if let Some(v) = lookup(&key) {
                limit.burst = super::number(&key, &v)?;
            }
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        for (name, limit) in self.named() {
            if !limit.per_second.is_finite() || limit.per_second < 0.0 {
                anyhow::bail!("rate_limits.{name}.per_second must be a number >= 0");
            }
            if limit.per_second > 0.0 && limit.burst == 0 {
                anyhow::bail!("rate_limits.{name}.burst must be positive");
            }
        }
        for cidr in &self.trusted_proxies {
            crate::push::gateway::Cidr::parse(cidr)
                .map_err(|e| anyhow::anyhow!("rate_limits.trusted_proxies: {e}"))?;
        }
        Ok(())
    }
}

/// Connection limits (`[limits]`): what a slow or idle client may hold.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections served at once; further ones wait in the listen backlog until one
    /// closes.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers, counted from when the connection
    /// is ready for the next request: a kept-alive connection with no new request is
    /// closed after this long too. Long-polling `/sync` is not affected (its headers
    /// arrive at once).
    pub header_read_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            header_read_timeout_secs: 30,
        }
    }
}

impl LimitsConfig {
    /// Applies `MYELIN_LIMITS_MAX_CONNECTIONS` and `MYELIN_LIMITS_HEADER_READ_TIMEOUT_SECS`.
    pub(super) fn apply_env(
        &mut self,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        if let Some(v) = lookup("MYELIN_LIMITS_MAX_CONNECTIONS") {
            self.max_connections = super::number("MYELIN_LIMITS_MAX_CONNECTIONS", &v)?;
        }
        if let Some(v) = lookup("MYELIN_LIMITS_HEADER_READ_TIMEOUT_SECS") {
            self.header_read_timeout_secs =
                super::number("MYELIN_LIMITS_HEADER_READ_TIMEOUT_SECS", &v)?;
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if self.max_connections == 0 {
            anyhow::bail!("limits.max_connections must be positive");
        }
        if self.header_read_timeout_secs == 0 {
            anyhow::bail!("limits.header_read_timeout_secs must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_has_the_defaults() {
        let c = super::super::Config::from_toml(include_str!("../../config/myelin.toml")).unwrap();
        let d = RateLimitsConfig::default();
        assert_eq!(c.rate_limits.named(), d.named());
        assert_eq!(c.rate_limits.enabled, d.enabled);
        assert_eq!(
            c.limits.max_connections,
            LimitsConfig::default().max_connections
        );
        assert_eq!(
            c.limits.header_read_timeout_secs,
            LimitsConfig::default().header_read_timeout_secs
        );
    }

    #[test]
    fn env_sets_limits() {
        let mut c = RateLimitsConfig::default();
        c.apply_env(&|k: &str| match k {
            "MYELIN_RATE_LIMITS_LOGIN_PER_SECOND" => Some("0.25".into()),
            "MYELIN_RATE_LIMITS_SEND_BURST" => Some("3".into()),
            "MYELIN_RATE_LIMITS_TRUSTED_PROXIES" => Some("10.0.0.0/8, ::1/128".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.login.per_second, 0.25);
        assert_eq!(c.send.burst, 3);
        assert_eq!(c.trusted_proxies, vec!["10.0.0.0/8", "::1/128"]);
        c.validate().unwrap();
        c.send.burst = 0;
        assert!(c.validate().is_err());
        let mut l = LimitsConfig::default();
        l.apply_env(&|k: &str| (k == "MYELIN_LIMITS_MAX_CONNECTIONS").then(|| "7".into()))
            .unwrap();
        assert_eq!(l.max_connections, 7);
    }
}
