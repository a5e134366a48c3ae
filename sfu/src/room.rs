//! Live rooms: the registry of rooms, and per room the signalling state, the connected
//! participants and the published tracks. Changes happen under the room's lock; media
//! work (adding down-tracks, renegotiating) happens after it is released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use livekit_protocol as proto;
use prost::Message as _;
use webrtc::api::API;
use webrtc::ice::udp_mux::{UDPMux as _, UDPMuxDefault};
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_receiver::RTCRtpReceiver;
use webrtc::track::track_remote::TrackRemote;

use crate::config::Config;
use crate::media::PublishedTrack;
use crate::metrics::{Gauges, Metrics};
use crate::participant::{Participant, LOSSY, RELIABLE};
use crate::speakers::Speakers;
use crate::state::{Joined, Outbox, RoomState, StateError};

/// How often active speakers are re-evaluated.
const SPEAKER_INTERVAL: Duration = Duration::from_millis(500);
/// How long after a published stream ended its publisher must still be in the room, and
/// still send the stream, for the SFU to treat it as lost rather than unpublished.
const LOST_STREAM_GRACE: Duration = Duration::from_secs(2);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The SFU: configuration, the media API and the rooms by name.
pub struct Sfu {
    pub config: Config,
    pub api: API,
    /// The one media socket's mux (`rtc.udp_port`), closed on shutdown.
    mux: Option<Arc<UDPMuxDefault>>,
    /// The embedded TURN server (`rtc.turn.enabled`).
    turn: Option<crate::turn::EmbeddedTurn>,
    pub metrics: Arc<Metrics>,
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// (room, user) → when the homeserver removed the user from the room's calls (seconds
    /// since the epoch): their tokens issued until then are refused.
    removed: Mutex<HashMap<(String, String), u64>>,
}

/// Removals kept before the oldest are forgotten (each outlives any token issued before
/// it: tokens last hours, not days).
const MAX_REMOVALS: usize = 100_000;
/// How long a removal is kept.
const REMOVAL_KEPT_SECS: u64 = 24 * 3600;

/// The user part of a participant identity (`{userId}:{deviceId}` for MatrixRTC).
fn user_of(identity: &str) -> &str {
    match identity.rsplit_once(':') {
        Some((user, _)) if user.contains(':') => user,
        _ => identity,
    }
}

impl Sfu {
    pub fn new(config: Config) -> Result<Arc<Sfu>, webrtc::Error> {
        let (api, mux) = crate::media::build_api(&config.rtc)?;
        let turn = match config.rtc.turn.enabled {
            true => {
                Some(crate::turn::EmbeddedTurn::start(&config.rtc).map_err(webrtc::Error::new)?)
            }
            false => None,
        };
        Ok(Arc::new(Sfu {
            config,
            api,
            mux,
            turn,
            metrics: Arc::new(Metrics::default()),
            rooms: Mutex::new(HashMap::new()),
            removed: Mutex::new(HashMap::new()),
        }))
    }

    /// Removes `user` from the calls of room `name` (they left the Matrix room, were kicked
    /// or banned): their participants are disconnected, and tokens issued to them until
    /// now are refused. Returns the identities disconnected.
    pub fn remove_user(&self, name: &str, user: &str) -> Vec<String> {
        let now = now_ms().max(0) as u64 / 1000;
        {
            let mut removed = self.removed.lock().unwrap_or_else(|e| e.into_inner());
            removed.retain(|_, at| now.saturating_sub(*at) < REMOVAL_KEPT_SECS);
            if removed.len() >= MAX_REMOVALS {
                if let Some(oldest) = removed
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone())
                {
                    removed.remove(&oldest);
                }
            }
            removed.insert((name.to_owned(), user.to_owned()), now);
        }
        match self.find_room(name) {
            Some(room) => room.disconnect_where(|identity| user_of(identity) == user),
            None => Vec::new(),
        }
    }

    /// Whether a token for `identity` in room `name`, issued at `issued_at`, predates the
    /// removal of its user from that room.
    pub fn was_removed(&self, name: &str, identity: &str, issued_at: u64) -> bool {
        self.removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(name.to_owned(), user_of(identity).to_owned()))
            .is_some_and(|at| issued_at <= *at)
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Arc<Room>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open room with this name, created when missing.
    pub fn open_room(&self, name: &str) -> Arc<Room> {
        let mut rooms = self.rooms();
        rooms
            .entry(name.to_owned())
            .or_insert_with(|| {
                let empty_timeout =
                    u32::try_from(self.config.room.empty_timeout_secs).unwrap_or(u32::MAX);
                let room = Arc::new(Room::new(name, empty_timeout, self.metrics.clone()));
                room.start_speaker_detection();
                room
            })
            .clone()
    }

    /// The room with this name, if open.
    pub fn find_room(&self, name: &str) -> Option<Arc<Room>> {
        self.rooms().get(name).cloned()
    }

    /// Names of the open rooms.
    pub fn room_names(&self) -> Vec<String> {
        self.rooms().keys().cloned().collect()
    }

    /// Tells every participant of every room that the server is going away.
    pub fn shutdown(&self) {
        let rooms: Vec<Arc<Room>> = self.rooms().values().cloned().collect();
        for room in rooms {
            room.disconnect_all(proto::DisconnectReason::ServerShutdown);
        }
        if let Some(turn) = &self.turn {
            turn.close();
        }
        // The mux's reader holds the socket until told to close.
        if let (Some(mux), Ok(runtime)) = (self.mux.clone(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                // Let the participants' leave messages go out first.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = mux.close().await;
            });
        }
    }

    /// Closes the room named `name` at once (its Matrix room was deleted): every
    /// participant is told to leave without reconnecting, with `reason`, and removed.
    /// Returns their identities; `None` when no such room is open.
    pub async fn close_room(
        &self,
        name: &str,
        reason: proto::DisconnectReason,
    ) -> Option<Vec<String>> {
        let room = self.rooms().remove(name)?;
        let mut identities = room.identities();
        identities.extend(room.hidden_identities());
        room.disconnect_all(reason);
        let sids: Vec<String> = {
            let mut inner = room.lock();
            inner.closed = true;
            inner.participants.keys().cloned().collect()
        };
        for sid in sids {
            room.leave(&sid).await;
        }
        tracing::info!(room = %name, participants = identities.len(), "room closed");
        Some(identities)
    }

    /// Current room, participant and track counts.
    pub fn gauges(&self) -> Gauges {
        let rooms: Vec<Arc<Room>> = self.rooms().values().cloned().collect();
        let mut gauges = Gauges {
            rooms: rooms.len(),
            ..Gauges::default()
        };
        for room in rooms {
            let inner = room.lock();
            gauges.participants += inner.participants.len();
            gauges.tracks += inner.tracks.len();
        }
        gauges
    }

    /// Closes `room` after the empty timeout unless somebody joined meanwhile.
    pub fn schedule_close(self: &Arc<Self>, room: &Arc<Room>) {
        let sfu = Arc::downgrade(self);
        let room = Arc::downgrade(room);
        let timeout = Duration::from_secs(self.config.room.empty_timeout_secs);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let (Some(sfu), Some(room)) = (sfu.upgrade(), room.upgrade()) else {
                return;
            };
            let mut rooms = sfu.rooms();
            if room.close_if_empty() {
                if rooms.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, &room)) {
                    rooms.remove(&room.name);
                }
                tracing::info!(room = %room.name, "closed empty room");
            }
        });
    }
}

struct Inner {
    state: RoomState,
    participants: HashMap<String, Arc<Participant>>,
    tracks: HashMap<String, Arc<PublishedTrack>>,
    /// (owner sid, cid) → track sid, to attach later simulcast layers to their track.
    by_cid: HashMap<(String, String), String>,
    speakers: Speakers,
    closed: bool,
}

/// A room that exists while it has participants (and for the empty timeout after).
pub struct Room {
    pub name: String,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
}

/// The room was closed while joining; join a fresh one.
#[derive(Debug)]
pub struct RoomClosed;

impl Room {
    fn new(name: &str, empty_timeout: u32, metrics: Arc<Metrics>) -> Room {
        let mut state = RoomState::new(name, now_ms());
        state.empty_timeout = empty_timeout;
        Room {
            name: name.to_owned(),
            metrics,
            inner: Mutex::new(Inner {
                state,
                participants: HashMap::new(),
                tracks: HashMap::new(),
                by_cid: HashMap::new(),
                speakers: Speakers::default(),
                closed: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deliver(inner: &Inner, outbox: Outbox) {
        for (to, message) in outbox {
            if let Some(p) = inner.participants.get(&to) {
                p.send(message);
            }
        }
    }

    /// Tells the participants whose identity matches to leave (removed by the server);
    /// returns their identities.
    pub fn disconnect_where(&self, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let inner = self.lock();
        let mut out = Vec::new();
        for p in inner.participants.values() {
            if !matches(&p.grant.identity) {
                continue;
            }
            p.tell_to_leave(proto::DisconnectReason::ParticipantRemoved, false);
            out.push(p.grant.identity.clone());
        }
        out
    }

    /// Sends everyone a leave (no reconnect) with `reason`; their sessions then end.
    pub fn disconnect_all(&self, reason: proto::DisconnectReason) {
        let inner = self.lock();
        for p in inner.participants.values() {
            p.tell_to_leave(reason, false);
        }
    }

    /// Every [`SPEAKER_INTERVAL`], tells everyone whose speaking state changed, until the
    /// room closes.
    fn start_speaker_detection(self: &Arc<Self>) {
        let room = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SPEAKER_INTERVAL);
            loop {
                ticker.tick().await;
                let Some(room) = room.upgrade() else { break };
                if !room.update_speakers() {
                    break;
                }
            }
        });
    }

    /// Sends `SpeakersChanged` when needed; returns false once the room is closed.
    fn update_speakers(&self) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        let mut levels: HashMap<String, f32> = HashMap::new();
        for track in inner.tracks.values() {
            if let Some(level) = track.take_level() {
                let entry = levels.entry(track.owner.clone()).or_insert(0.0);
                *entry = entry.max(level);
            }
        }
        let changes = inner.speakers.update(levels);
        if !changes.is_empty() {
            for p in inner.participants.values() {
                p.send(proto::signal_response::Message::SpeakersChanged(
                    proto::SpeakersChanged {
                        speakers: changes.clone(),
                    },
                ));
            }
        }
        true
    }

    fn close_if_empty(&self) -> bool {
        let mut inner = self.lock();
        if inner.state.is_empty() {
            inner.closed = true;
        }
        inner.closed
    }

    pub fn is_empty(&self) -> bool {
        self.lock().state.is_empty()
    }

    /// The visible participants' infos in join order.
    pub fn participants(&self) -> Vec<proto::ParticipantInfo> {
        self.lock().state.participants()
    }

    /// Whether a recorder is in the room.
    pub fn is_recording(&self) -> bool {
        self.lock().state.is_recording()
    }

    /// Adds a participant; returns the join result and the `Room` message.
    pub fn join(
        &self,
        participant: &Arc<Participant>,
    ) -> Result<(Joined, proto::Room), RoomClosed> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(RoomClosed);
        }
        let mut joined = inner
            .state
            .join(&participant.sid, &participant.grant, now_ms());
        let outbox = std::mem::take(&mut joined.outbox);
        Self::deliver(&inner, outbox);
        if let Some(old) = &joined.replaced {
            if let Some(p) = inner.participants.get(old) {
                p.disconnect.notify_one();
            }
        }
        inner
            .participants
            .insert(participant.sid.clone(), participant.clone());
        let info = inner.state.room_info();
        Ok((joined, info))
    }

    /// Subscribes a newly joined participant to every published track (unless it asked
    /// for no automatic subscriptions) and sends its first
    /// subscriber offer (which also carries the SFU's data channels).
    pub async fn start_subscriptions(&self, participant: &Arc<Participant>) {
        let tracks: Vec<Arc<PublishedTrack>> = if participant.auto_subscribe {
            self.lock().tracks.values().cloned().collect()
        } else {
            Vec::new()
        };
        for track in &tracks {
            self.subscribe(participant, track).await;
        }
        participant.negotiate().await;
    }

    /// Removes a participant, its tracks and its subscriptions. Unknown sids are a no-op.
    pub async fn leave(&self, sid: &str) {
        let (participant, subscribers, own_tracks) = {
            let mut inner = self.lock();
            let Some(participant) = inner.participants.remove(sid) else {
                return;
            };
            let outbox = inner.state.leave(sid);
            Self::deliver(&inner, outbox);
            let own: Vec<String> = inner
                .tracks
                .values()
                .filter(|t| t.owner == sid)
                .map(|t| t.sid.clone())
                .collect();
            let mut subscribers = Vec::new();
            for track_sid in &own {
                if let Some(track) = inner.tracks.remove(track_sid) {
                    for p in inner.participants.values() {
                        if track.remove_down_track(&p.sid).is_some() {
                            subscribers.push((p.clone(), track_sid.clone()));
                        }
                    }
                }
            }
            inner.by_cid.retain(|(owner, _), _| owner != sid);
            for track in inner.tracks.values() {
                track.remove_down_track(sid);
            }
            (participant, subscribers, own)
        };
        for (p, track_sid) in subscribers {
            p.unsubscribe(&track_sid).await;
        }
        participant.close().await;
        tracing::info!(room = %self.name, participant = %sid, tracks = own_tracks.len(), "participant left");
    }

    /// Handles `AddTrackRequest`.
    pub fn add_track(
        &self,
        sid: &str,
        req: &proto::AddTrackRequest,
    ) -> Result<proto::TrackInfo, StateError> {
        self.lock().state.add_track(sid, req)
    }

    /// Media arrived on a publisher connection: publish the track (or add a simulcast
    /// layer to it), start forwarding, and subscribe everybody else.
    pub async fn on_remote_track(
        self: &Arc<Self>,
        owner: &Arc<Participant>,
        remote: Arc<TrackRemote>,
        receiver: Arc<RTCRtpReceiver>,
    ) {
        let audio_level_ext = receiver
            .get_parameters()
            .await
            .header_extensions
            .iter()
            .find(|e| e.uri == webrtc::sdp::extmap::AUDIO_LEVEL_URI)
            .and_then(|e| u8::try_from(e.id).ok());
        let cid = remote.id();
        let rid = remote.rid().to_owned();
        let ssrc = remote.ssrc();
        let codec = remote.codec().capability;
        let kind = match remote.kind() {
            RTPCodecType::Video => proto::TrackType::Video,
            _ => proto::TrackType::Audio,
        };
        let (track, subscribers) = {
            let mut inner = self.lock();
            let key = (owner.sid.clone(), cid.clone());
            let existing = inner
                .by_cid
                .get(&key)
                .and_then(|sid| inner.tracks.get(sid))
                .cloned();
            if let Some(track) = existing {
                track.add_layer(&rid, ssrc);
                (track, Vec::new())
            } else {
                let Some((info, outbox)) =
                    inner
                        .state
                        .publish_pending(&owner.sid, &cid, kind, &codec.mime_type)
                else {
                    tracing::warn!(room = %self.name, participant = %owner.sid, %cid, "media for a track never announced");
                    return;
                };
                #[allow(deprecated)] // `layers` is what livekit-client fills in
                let announced = info
                    .layers
                    .iter()
                    .map(|l| (l.quality.clamp(0, 2) as u8 + 1, l.width, l.height))
                    .collect();
                let track = Arc::new(PublishedTrack::new(
                    info.sid.clone(),
                    owner.sid.clone(),
                    remote.kind(),
                    codec,
                    &owner.publisher,
                    info.muted,
                    announced,
                    audio_level_ext,
                    self.metrics.clone(),
                ));
                track.add_layer(&rid, ssrc);
                inner.tracks.insert(info.sid.clone(), track.clone());
                inner.by_cid.insert(key, info.sid.clone());
                Self::deliver(&inner, outbox);
                let subscribers: Vec<Arc<Participant>> = inner
                    .participants
                    .values()
                    .filter(|p| p.sid != owner.sid && p.auto_subscribe)
                    .cloned()
                    .collect();
                tracing::info!(room = %self.name, participant = %owner.sid, track = %info.sid, ?kind, "track published");
                (track, subscribers)
            }
        };
        let room = Arc::downgrade(self);
        let publisher = Arc::downgrade(owner);
        let forwarding = track.clone();
        #[cfg(feature = "test-hooks")]
        let identity = owner.grant.identity.clone();
        tokio::spawn(async move {
            loop {
                match remote.read_rtp().await {
                    #[cfg(feature = "test-hooks")]
                    Ok(_) if crate::test_hooks::stream_lost(&identity) => break,
                    Ok((packet, _)) => forwarding.forward(&packet, ssrc).await,
                    Err(e) => {
                        tracing::debug!(track = %forwarding.sid, ssrc, error = %e, "published stream ended");
                        break;
                    }
                }
            }
            if !forwarding.remove_layer(ssrc) {
                if let Some(room) = room.upgrade() {
                    room.unpublish(&forwarding.owner, &forwarding.sid).await;
                }
            }
            // webrtc-rs can close a stream it is still receiving: when an SSRC's first
            // packets beat its receiver, it also probes the SSRC as an undeclared simulcast
            // stream, and closes the shared stream once the probe fails. Nothing reopens
            // it, so a client that, a moment later, is still here and still sends that
            // SSRC is asked to reconnect (as a LiveKit server asks on a state mismatch):
            // it joins again and republishes. (A leaving client's streams end too, but it
            // is gone from the room by then.)
            tokio::time::sleep(LOST_STREAM_GRACE).await;
            let (Some(owner), Some(room)) = (publisher.upgrade(), room.upgrade()) else {
                return;
            };
            let present = room
                .lock()
                .participants
                .get(&owner.sid)
                .is_some_and(|p| Arc::ptr_eq(p, &owner));
            if present && owner.still_sends(ssrc).await {
                tracing::warn!(participant = %owner.sid, track = %forwarding.sid, ssrc, "published stream lost while the client still sends it: asking the client to reconnect");
                owner.tell_to_leave(proto::DisconnectReason::StateMismatch, true);
            }
        });
        for p in subscribers {
            self.subscribe(&p, &track).await;
        }
    }

    /// Subscribes `p` to `track` and tells the track's owner (`TrackSubscribed`).
    async fn subscribe(&self, p: &Arc<Participant>, track: &Arc<PublishedTrack>) {
        if p.subscribe(track).await {
            if let Some(owner) = self.lock().participants.get(&track.owner) {
                owner.send(proto::signal_response::Message::TrackSubscribed(
                    proto::TrackSubscribed {
                        track_sid: track.sid.clone(),
                    },
                ));
            }
        }
    }

    /// Removes a published track (its media ended).
    pub async fn unpublish(&self, owner: &str, track_sid: &str) {
        let subscribers = {
            let mut inner = self.lock();
            let Some(track) = inner.tracks.remove(track_sid) else {
                return;
            };
            inner.by_cid.retain(|_, t| t != track_sid);
            if let Ok(outbox) = inner.state.unpublish(owner, track_sid) {
                Self::deliver(&inner, outbox);
            }
            inner
                .participants
                .values()
                .filter(|p| track.remove_down_track(&p.sid).is_some())
                .cloned()
                .collect::<Vec<_>>()
        };
        for p in subscribers {
            p.unsubscribe(track_sid).await;
        }
    }

    /// Mutes or unmutes a track. `by_server` also tells its owner (`SignalResponse.mute`).
    pub async fn set_muted(
        &self,
        owner: &str,
        track_sid: &str,
        muted: bool,
        by_server: bool,
    ) -> Result<(), StateError> {
        let track = {
            let mut inner = self.lock();
            let outbox = inner.state.set_muted(owner, track_sid, muted, by_server)?;
            Self::deliver(&inner, outbox);
            inner.tracks.get(track_sid).cloned()
        };
        if let Some(track) = track {
            track.set_muted(muted);
            if !muted {
                for p in self.participant_sids() {
                    track.request_keyframe_for(&p).await;
                }
            }
        }
        Ok(())
    }

    fn participant_sids(&self) -> Vec<String> {
        self.lock().participants.keys().cloned().collect()
    }

    /// Server-side mute of `identity`'s tracks of `kind` (all kinds when `None`).
    /// Returns the number of tracks changed, or `None` when the identity is not here.
    pub async fn mute_identity(
        &self,
        identity: &str,
        kind: Option<proto::TrackType>,
        muted: bool,
    ) -> Option<usize> {
        let (sid, tracks) = {
            let inner = self.lock();
            let sid = inner.state.sid_of(identity)?;
            let tracks = inner.state.tracks_of(&sid, kind);
            (sid, tracks)
        };
        let mut changed = 0;
        for track in tracks {
            if self.set_muted(&sid, &track, muted, true).await.is_ok() {
                changed += 1;
            }
        }
        Some(changed)
    }

    /// Identities of the visible participants present.
    pub fn identities(&self) -> Vec<String> {
        self.participants()
            .into_iter()
            .map(|p| p.identity)
            .collect()
    }

    /// Identities of the hidden participants present (recorders).
    pub fn hidden_identities(&self) -> Vec<String> {
        self.lock()
            .state
            .hidden_participants()
            .into_iter()
            .map(|p| p.identity)
            .collect()
    }

    /// A subscriber's track settings: `disabled` pauses forwarding of those tracks to it;
    /// the requested size or quality caps the simulcast layer it gets.
    pub async fn update_track_settings(
        &self,
        subscriber: &str,
        settings: &proto::UpdateTrackSettings,
    ) {
        let tracks: Vec<Arc<PublishedTrack>> = {
            let inner = self.lock();
            settings
                .track_sids
                .iter()
                .filter_map(|sid| inner.tracks.get(sid).cloned())
                .collect()
        };
        for track in tracks {
            if let Some(down) = track.down_track(subscriber) {
                down.set_max_rank(crate::media::max_rank_for(settings, &track.announced));
                down.set_paused(settings.disabled);
                if !settings.disabled {
                    track.request_keyframe_for(subscriber).await;
                }
            }
        }
    }

    /// A subscriber's explicit (un)subscription of tracks.
    pub async fn update_subscription(
        &self,
        subscriber: &Arc<Participant>,
        update: &proto::UpdateSubscription,
    ) {
        let mut sids = update.track_sids.clone();
        for pt in &update.participant_tracks {
            sids.extend(pt.track_sids.iter().cloned());
        }
        let tracks: Vec<Arc<PublishedTrack>> = {
            let inner = self.lock();
            sids.iter()
                .filter_map(|sid| inner.tracks.get(sid).cloned())
                .collect()
        };
        for track in tracks {
            if update.subscribe {
                self.subscribe(subscriber, &track).await;
            } else if track.remove_down_track(&subscriber.sid).is_some() {
                subscriber.unsubscribe(&track.sid).await;
            }
        }
    }

    // The per-packet identity fields inside `UserPacket` are deprecated but still read by
    // older clients, so they are stamped too.
    #[allow(deprecated)]
    /// Relays a `DataPacket` received from `from` on its data channel `label` to the
    /// other participants (or to its `destination_identities`), stamped with the sender.
    pub async fn relay_data(&self, from: &Participant, label: &str, data: &[u8]) {
        // Only the two DataPacket channels are relayed (not, e.g., `_data_track`).
        if !from.grant.can_publish_data || (label != RELIABLE && label != LOSSY) {
            return;
        }
        let Ok(mut packet) = proto::DataPacket::decode(data) else {
            tracing::debug!(participant = %from.sid, "undecodable data packet");
            return;
        };
        packet.participant_identity = from.grant.identity.clone();
        packet.participant_sid = from.sid.clone();
        let mut destinations = std::mem::take(&mut packet.destination_identities);
        if let Some(proto::data_packet::Value::User(user)) = &mut packet.value {
            user.participant_identity = from.grant.identity.clone();
            user.participant_sid = from.sid.clone();
            destinations.extend(user.destination_identities.iter().cloned());
        }
        let encoded = Bytes::from(packet.encode_to_vec());
        let recipients: Vec<Arc<Participant>> = {
            let inner = self.lock();
            inner
                .participants
                .values()
                .filter(|p| p.sid != from.sid)
                .filter(|p| destinations.is_empty() || destinations.contains(&p.grant.identity))
                .cloned()
                .collect()
        };
        let lossy = label == LOSSY;
        for p in recipients {
            p.send_data(lossy, &encoded).await;
            Metrics::add(&self.metrics.data_out, 1);
        }
    }
}

#[cfg(test)]
mod removal_tests {
    use super::user_of;

    #[test]
    fn the_user_of_an_identity() {
        assert_eq!(user_of("@bob:example.org:DEVICE"), "@bob:example.org");
        assert_eq!(
            user_of("@bob:example.org:8448:DEV"),
            "@bob:example.org:8448"
        );
        assert_eq!(user_of("plain-identity"), "plain-identity");
        assert_eq!(user_of("@bob:example.org"), "@bob:example.org");
    }
}
