//! Rate limits: one keyed token bucket (governor's GCRA) per action, keyed by client
//! address or user, answering `M_LIMIT_EXCEEDED` with the time until the next token.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota};
use ruma::OwnedUserId;

use crate::{
    config::{RateLimit, RateLimitsConfig},
    push::gateway::Cidr,
    users::Session,
    Error, Result,
};

/// What a request does, for the limit it counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `POST /login`, per client address.
    Login,
    /// `POST /login`, per account tried.
    LoginAccount,
    /// `POST /register`, per client address.
    Register,
    /// Sending an event, per user.
    Send,
    /// `POST /createRoom`, per user.
    CreateRoom,
    /// Media upload, per user.
    Upload,
    /// Thumbnail, per user (or client address when unauthenticated).
    Thumbnail,
    /// Joining through an invite link, per user.
    JoinByLink,
}

impl Action {
    /// Every action, in declaration order (`action as usize` indexes it).
    const ALL: [Action; 8] = [
        Action::Login,
        Action::LoginAccount,
        Action::Register,
        Action::Send,
        Action::CreateRoom,
        Action::Upload,
        Action::Thumbnail,
        Action::JoinByLink,
    ];

    /// The configured limit of this action.
    fn limit(self, config: &RateLimitsConfig) -> RateLimit {
        match self {
            Action::Login => config.login,
            Action::LoginAccount => config.login_account,
            Action::Register => config.register,
            Action::Send => config.send,
            Action::CreateRoom => config.create_room,
            Action::Upload => config.upload,
            Action::Thumbnail => config.thumbnail,
            Action::JoinByLink => config.join_by_link,
        }
    }
}

/// Whose bucket a request takes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// A client address.
    Ip(IpAddr),
    /// A user (local or not: login attempts name accounts).
    User(OwnedUserId),
}

/// Buckets are pruned of full (idle) keys after this many checks.
const PRUNE_EVERY: u64 = 4096;

/// The rate limiters of the server.
pub struct RateLimiter {
    /// One limiter per [`Action`] (indexed by `action as usize`); `None` = unlimited.
    limiters: Vec<Option<DefaultKeyedRateLimiter<RateKey>>>,
    checks: AtomicU64,
    trusted_proxies: Vec<Cidr>,
}

fn quota(limit: RateLimit) -> Option<Quota> {
    if limit.per_second <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / limit.per_second);
    let burst = NonZeroU32::new(limit.burst)?;
    Some(Quota::with_period(period)?.allow_burst(burst))
}

impl RateLimiter {
    /// Limiters for the configured limits (none at all when `enabled` is false).
    pub fn new(config: &RateLimitsConfig) -> RateLimiter {
        let limiters = Action::ALL
            .iter()
            .map(|action| {
                config
                    .enabled
                    .then(|| quota(action.limit(config)))
                    .flatten()
                    .map(governor::RateLimiter::keyed)
            })
            .collect();
        RateLimiter {
            limiters,
            checks: AtomicU64::new(0),
            // Checked by the config's validation; an unparsable entry trusts nobody.
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .filter_map(|c| Cidr::parse(c).ok())
                .collect(),
        }
    }

    /// The reverse proxies whose `X-Forwarded-For` names the client.
    pub fn trusted_proxies(&self) -> &[Cidr] {
        &self.trusted_proxies
    }

    /// Takes a token from `ip`'s bucket for `action`; requests without a client address
    /// (not over a socket) are not limited by address.
    pub fn check_ip(&self, action: Action, ip: Option<IpAddr>) -> Result<()> {
        match ip {
            Some(ip) => self.check(action, RateKey::Ip(ip)),
            None => Ok(()),
        }
    }

    /// Takes a token from `key`'s bucket for `action`, or `M_LIMIT_EXCEEDED` with the
    /// wait until the next one.
    pub fn check(&self, action: Action, key: RateKey) -> Result<()> {
        let Some(limiter) = self.limiters.get(action as usize).and_then(Option::as_ref) else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.prune();
        }
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            tracing::debug!(?action, ?key, ?wait, "rate limited");
            Error::limit_exceeded(wait)
        })
    }

    /// [`RateLimiter::check`] keyed by the session's user, unless the session is exempt
    /// from rate limits.
    pub fn check_session(&self, action: Action, session: &Session) -> Result<()> {
        if session.rate_limit_exempt {
            return Ok(());
        }
        self.check(action, RateKey::User(session.user_id.clone()))
    }

    /// Drops the buckets of keys that have been quiet long enough to be full again.
    fn prune(&self) {
        for limiter in self.limiters.iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> RateKey {
        RateKey::User(ruma::UserId::parse(format!("@{name}:localhost")).unwrap())
    }

    #[test]
    fn burst_then_limited_per_key() {
        let config = RateLimitsConfig {
            send: RateLimit {
                per_second: 0.01,
                burst: 3,
            },
            ..RateLimitsConfig::default()
        };
        let limiter = RateLimiter::new(&config);
        for _ in 0..3 {
            limiter.check(Action::Send, user("alice")).unwrap();
        }
        let err = limiter.check(Action::Send, user("alice")).unwrap_err();
        assert_eq!(err.errcode(), "M_LIMIT_EXCEEDED");
        let body = err.body();
        assert!(body["retry_after_ms"].as_u64().unwrap() > 1000);
        limiter.check(Action::Send, user("bob")).unwrap();
        limiter.check(Action::Login, user("alice")).unwrap();
    }

    #[test]
    fn disabled_and_zero_rate_are_unlimited() {
        let mut config = RateLimitsConfig::default();
        config.register.per_second = 0.0;
        let limiter = RateLimiter::new(&config);
        let ip = RateKey::Ip([127, 0, 0, 1].into());
        for _ in 0..100 {
            limiter.check(Action::Register, ip.clone()).unwrap();
        }
        config.enabled = false;
        let limiter = RateLimiter::new(&config);
        for _ in 0..100 {
            limiter.check(Action::Login, ip.clone()).unwrap();
        }
    }
}
