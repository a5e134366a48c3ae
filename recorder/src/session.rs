//! The recorder's LiveKit session: joins the SFU room with the crate's webrtc-rs client
//! (`myelin_sfu::client`; the token should grant `hidden` and `recorder`), lets the SFU
//! subscribe it to every track (auto-subscribe, also for tracks published later), reads
//! each subscribed track's RTP on its own task, and turns all of it into
//! [`SessionEvent`]s on one channel. Key frames are requested with RTCP PLI.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use livekit_protocol as proto;
use myelin_sfu::client::{Client, ConnectOptions, Event};
use proto::signal_response::Message as Resp;
use tokio::sync::mpsc;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::track::track_remote::TrackRemote;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Audio,
    Video,
}

/// What happened in the session.
#[derive(Debug)]
pub enum SessionEvent {
    /// A track was subscribed: its sid (`TR_…`), its owner's sid (`PA_…`), its kind.
    Track {
        track: String,
        owner: String,
        kind: Kind,
    },
    /// An RTP packet of a subscribed track, stamped when it was read.
    Rtp {
        track: String,
        packet: Packet,
        at: Instant,
    },
    /// A subscribed track ended (unpublished, or its owner left).
    TrackEnded { track: String },
    /// Speaker changes: (participant sid, level, active).
    Speakers(Vec<(String, f32, bool)>),
    /// The SFU ended the session (or the socket closed): nothing more will come.
    Ended(String),
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
#[error("joining the SFU room: {0}")]
pub struct JoinError(String);

/// A joined session.
pub struct Session {
    client: Client,
    /// Track sid → media SSRC, for key-frame requests.
    ssrcs: Arc<Mutex<HashMap<String, u32>>>,
}

impl Session {
    /// Joins the room `token` grants at `url` (`ws://` or `wss://`, with or without a
    /// path); events arrive on the returned channel.
    pub async fn join(
        url: &str,
        token: &str,
    ) -> Result<(Session, mpsc::UnboundedReceiver<SessionEvent>), JoinError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let ssrcs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let on_track = {
            let tx = tx.clone();
            let ssrcs = ssrcs.clone();
            Arc::new(move |track: Arc<TrackRemote>| {
                let tx = tx.clone();
                let ssrcs = ssrcs.clone();
                tokio::spawn(read_track(track, tx, ssrcs));
            })
        };
        let options = ConnectOptions {
            on_track: Some(on_track),
            any_interface: !loopback_host(url),
            ..Default::default()
        };
        let base = url.trim_end_matches('/').trim_end_matches("/rtc");
        let mut client = Client::connect_with(base, token, options)
            .await
            .map_err(|e| JoinError(e.to_string()))?;
        let (_, placeholder) = mpsc::unbounded_channel();
        let mut events = std::mem::replace(&mut client.events, placeholder);
        // Published tracks by participant, from the join and the SFU's participant
        // updates: a track missing from a later update (or whose owner left) has ended,
        // even if its receiver is kept for reuse and never reports an end.
        let mut published: HashMap<String, Vec<String>> = HashMap::new();
        ended_tracks(&mut published, &client.join.other_participants);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Event::Signal(Resp::Update(update)) = &event {
                    for ended in ended_tracks(&mut published, &update.participants) {
                        if tx.send(SessionEvent::TrackEnded { track: ended }).is_err() {
                            return;
                        }
                    }
                    continue;
                }
                let out = match event {
                    Event::Signal(Resp::SpeakersChanged(changed)) => SessionEvent::Speakers(
                        changed
                            .speakers
                            .into_iter()
                            .map(|s| (s.sid, s.level, s.active))
                            .collect(),
                    ),
                    Event::Signal(Resp::Leave(leave)) => SessionEvent::Ended(format!(
                        "the SFU ended the session (reason {})",
                        leave.reason
                    )),
                    Event::SocketClosed => {
                        SessionEvent::Ended("the signalling connection closed".into())
                    }
                    _ => continue,
                };
                let ended = matches!(out, SessionEvent::Ended(_));
                if tx.send(out).is_err() || ended {
                    break;
                }
            }
        });
        Ok((Session { client, ssrcs }, rx))
    }

    /// Asks the sender of `track` for a key frame (PLI, relayed upstream by the SFU).
    pub async fn request_keyframe(&self, track: &str) {
        let Some(ssrc) = self
            .ssrcs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(track)
            .copied()
        else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        if let Err(e) = self.client.subscriber.write_rtcp(&[Box::new(pli)]).await {
            tracing::debug!(%track, error = %e, "key frame request not sent");
        }
    }

    /// Leaves the room.
    pub async fn close(self) {
        self.client.close().await;
    }
}

/// Whether the URL's host is on this machine's loopback (`localhost`, 127.0.0.0/8, ::1).
/// Then ICE gathers loopback candidates only: the SFU's media is reached on the same host,
/// and candidates on other interfaces (link-local IPv6, cross-interface pairs) only slow
/// the connection down or, with webrtc-rs, break it.
fn loopback_host(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Updates `published` with participant infos; returns the tracks that disappeared.
fn ended_tracks(
    published: &mut HashMap<String, Vec<String>>,
    participants: &[proto::ParticipantInfo],
) -> Vec<String> {
    let mut ended = Vec::new();
    for p in participants {
        let gone = p.state == proto::participant_info::State::Disconnected as i32;
        let now: Vec<String> = if gone {
            Vec::new()
        } else {
            p.tracks.iter().map(|t| t.sid.clone()).collect()
        };
        if let Some(before) = published.get(&p.sid) {
            ended.extend(before.iter().filter(|t| !now.contains(t)).cloned());
        }
        if gone {
            published.remove(&p.sid);
        } else {
            published.insert(p.sid.clone(), now);
        }
    }
    ended
}

/// Reads one subscribed track until it ends.
async fn read_track(
    track: Arc<TrackRemote>,
    tx: mpsc::UnboundedSender<SessionEvent>,
    ssrcs: Arc<Mutex<HashMap<String, u32>>>,
) {
    let id = track.id();
    // The SFU names streams `{participant sid}|{track sid}`.
    let stream = track.stream_id();
    let owner = stream.split('|').next().unwrap_or_default().to_owned();
    let kind = match track.kind() {
        RTPCodecType::Video => Kind::Video,
        _ => Kind::Audio,
    };
    let codec = track.codec().capability.mime_type.to_ascii_lowercase();
    let expected = match kind {
        Kind::Audio => "audio/opus",
        Kind::Video => "video/vp8",
    };
    if codec != expected {
        tracing::warn!(track = %id, %codec, "not recorded: only Opus audio and VP8 video are");
        return;
    }
    ssrcs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), track.ssrc());
    tracing::info!(track = %id, %owner, ?kind, "recording track");
    if tx
        .send(SessionEvent::Track {
            track: id.clone(),
            owner,
            kind,
        })
        .is_err()
    {
        return;
    }
    while let Ok((packet, _)) = track.read_rtp().await {
        let event = SessionEvent::Rtp {
            track: id.clone(),
            packet,
            at: Instant::now(),
        };
        if tx.send(event).is_err() {
            return;
        }
    }
    ssrcs.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    let _ = tx.send(SessionEvent::TrackEnded { track: id });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(sid: &str, tracks: &[&str], gone: bool) -> proto::ParticipantInfo {
        proto::ParticipantInfo {
            sid: sid.into(),
            state: if gone {
                proto::participant_info::State::Disconnected as i32
            } else {
                proto::participant_info::State::Active as i32
            },
            tracks: tracks
                .iter()
                .map(|t| proto::TrackInfo {
                    sid: (*t).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn loopback_urls() {
        for url in [
            "ws://127.0.0.1:7880",
            "ws://localhost:7880/rtc",
            "wss://127.1.2.3",
            "ws://[::1]:7880",
        ] {
            assert!(loopback_host(url), "{url}");
        }
        for url in [
            "wss://sfu.example.org",
            "ws://10.0.0.5:7880",
            "wss://[2001:db8::1]:443/rtc",
        ] {
            assert!(!loopback_host(url), "{url}");
        }
    }

    #[test]
    fn tracks_end_when_unpublished_or_their_owner_leaves() {
        let mut published = HashMap::new();
        assert!(ended_tracks(&mut published, &[info("PA_a", &["TR_1", "TR_2"], false)]).is_empty());
        assert!(ended_tracks(&mut published, &[info("PA_b", &["TR_3"], false)]).is_empty());
        assert_eq!(
            ended_tracks(&mut published, &[info("PA_a", &["TR_2"], false)]),
            vec!["TR_1".to_owned()]
        );
        assert_eq!(
            ended_tracks(&mut published, &[info("PA_a", &[], true)]),
            vec!["TR_2".to_owned()]
        );
        assert!(ended_tracks(&mut published, &[info("PA_a", &[], true)]).is_empty());
        assert_eq!(published.len(), 1);
    }
}
