//! Which SFU hosts a call: one SFU (`rtc.livekit_url`), or several (`rtc.sfus`) among
//! which each call — a LiveKit room, that is a Matrix room and a MatrixRTC slot — is
//! placed by rendezvous (highest random weight) hashing: every SFU gets a score
//! SHA-256(url ‖ 0 ‖ room) and the highest wins. Everyone in a call gets the same SFU, the
//! placement needs no shared state, and it stays put while the list of SFUs does (adding
//! or removing an SFU moves only the calls that the change must move). The moderators'
//! mute, removals, room deletion, delegated leaves and recording go to the same SFU.

use sha2::{Digest, Sha256};

use super::sfu_admin::{http_base, SfuAdmin};
use crate::{config::RtcConfig, Result};

/// One SFU and the client of its internal API.
pub struct PlacedSfu {
    /// The WebSocket URL clients get with their token.
    pub url: String,
    /// The operator's label for it (logs only).
    pub region: String,
    /// Its signalling URL on the internal address (`internal_url` as `ws(s)://`): where
    /// the server's own participants (the meeting recorder) connect.
    pub internal_ws: String,
    /// Its internal admin API.
    pub admin: SfuAdmin,
}

/// The SFUs calls are placed on.
pub struct SfuPool {
    sfus: Vec<PlacedSfu>,
}

impl SfuPool {
    /// The SFUs of `rtc.sfus`, or the one at `rtc.livekit_url`; all share the internal
    /// API `secret`.
    pub fn new(rtc: &RtcConfig, secret: &str) -> Result<SfuPool> {
        let sfus = if rtc.sfus.is_empty() {
            vec![PlacedSfu {
                url: rtc.livekit_url.clone(),
                region: String::new(),
                internal_ws: rtc.livekit_url.clone(),
                admin: SfuAdmin::new(&http_base(&rtc.livekit_url), secret.to_owned())?,
            }]
        } else {
            rtc.sfus
                .iter()
                .map(|entry| {
                    let base = if entry.internal_url.is_empty() {
                        http_base(&entry.url)
                    } else {
                        entry.internal_url.trim_end_matches('/').to_owned()
                    };
                    Ok(PlacedSfu {
                        url: entry.url.trim_end_matches('/').to_owned(),
                        region: entry.region.clone(),
                        internal_ws: ws_of(&base),
                        admin: SfuAdmin::new(&base, secret.to_owned())?,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(SfuPool { sfus })
    }

    /// The SFU hosting the LiveKit room `room`.
    pub fn for_room(&self, room: &str) -> &PlacedSfu {
        let chosen = self
            .sfus
            .iter()
            .max_by_key(|sfu| score(&sfu.url, room))
            .expect("an SFU pool is never empty");
        if self.sfus.len() > 1 {
            tracing::debug!(room, sfu = %chosen.url, region = %chosen.region, "call placed");
        }
        chosen
    }

    /// Every SFU.
    pub fn all(&self) -> &[PlacedSfu] {
        &self.sfus
    }
}

/// The WebSocket URL of an `http(s)://` base.
fn ws_of(base: &str) -> String {
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    }
}

/// The rendezvous score of an SFU for a room.
fn score(url: &str, room: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(url.as_bytes());
    hash.update([0]);
    hash.update(room.as_bytes());
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SfuEntry;

    fn pool(urls: &[&str]) -> SfuPool {
        let rtc = RtcConfig {
            sfus: urls
                .iter()
                .map(|u| SfuEntry {
                    url: (*u).to_owned(),
                    ..SfuEntry::default()
                })
                .collect(),
            ..RtcConfig::default()
        };
        SfuPool::new(&rtc, "secret").unwrap()
    }

    #[test]
    fn internal_addresses_serve_the_servers_own_participants() {
        let rtc = RtcConfig {
            sfus: vec![
                SfuEntry {
                    url: "wss://sfu1.example".into(),
                    internal_url: "http://10.0.0.1:7880".into(),
                    region: String::new(),
                },
                SfuEntry {
                    url: "wss://sfu2.example".into(),
                    ..SfuEntry::default()
                },
            ],
            ..RtcConfig::default()
        };
        let pool = SfuPool::new(&rtc, "s").unwrap();
        assert_eq!(pool.all()[0].internal_ws, "ws://10.0.0.1:7880");
        assert_eq!(pool.all()[1].internal_ws, "wss://sfu2.example");
    }

    #[test]
    fn one_sfu_without_a_list() {
        let pool = SfuPool::new(&RtcConfig::default(), "s").unwrap();
        assert_eq!(pool.all().len(), 1);
        assert_eq!(pool.for_room("any").url, "ws://127.0.0.1:7880");
    }

    #[test]
    fn calls_spread_and_only_a_removed_sfus_calls_move() {
        let three = pool(&["ws://a:7880", "ws://b:7880", "ws://c:7880"]);
        let rooms: Vec<String> = (0..600).map(|i| format!("room-{i}")).collect();
        let placed: Vec<&str> = rooms
            .iter()
            .map(|r| three.for_room(r).url.as_str())
            .collect();
        for url in ["ws://a:7880", "ws://b:7880", "ws://c:7880"] {
            let n = placed.iter().filter(|p| **p == url).count();
            assert!((120..=280).contains(&n), "{url} hosts {n} of 600 calls");
        }
        // The same room always lands on the same SFU.
        assert!(rooms
            .iter()
            .zip(&placed)
            .all(|(r, p)| three.for_room(r).url == *p));
        // Without c, calls on a and b stay where they are; c's move.
        let two = pool(&["ws://a:7880", "ws://b:7880"]);
        for (room, before) in rooms.iter().zip(&placed) {
            let after = two.for_room(room).url.as_str();
            if *before != "ws://c:7880" {
                assert_eq!(after, *before, "{room} moved");
            }
        }
    }
}
