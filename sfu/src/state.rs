//! The signalling state machine of one room: who is in it, which tracks they publish, and
//! which signalling messages each change sends to whom. Pure: no I/O, no locks, no media.

use std::collections::HashMap;

use livekit_protocol as proto;
use proto::signal_response::Message;

use crate::auth::Grant;

/// Most tracks a participant may announce (`AddTrackRequest`) before their media arrives.
pub const MAX_PENDING_TRACKS: usize = 16;

/// Messages to deliver: recipient participant sid → message.
pub type Outbox = Vec<(String, Message)>;

/// A fresh id with a LiveKit-style prefix (`RM_`, `PA_`, `TR_`).
pub fn new_sid(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..12)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("{prefix}{tail}")
}

/// Why a signalling request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("participant not in room")]
    NoParticipant,
    #[error("no permission to publish")]
    CannotPublish,
    #[error("track already being published with this cid")]
    DuplicateCid,
    #[error("unknown track")]
    NoTrack,
    #[error("too many tracks announced and not yet sent")]
    TooManyPending,
}

#[derive(Debug, Clone)]
struct Member {
    info: proto::ParticipantInfo,
    /// Never announced to the others (`hidden` grant).
    hidden: bool,
    /// A recorder (`recorder` grant): the room is recorded while one is present.
    recorder: bool,
    /// Tracks announced with `AddTrackRequest` whose media has not arrived yet, by cid.
    pending: HashMap<String, proto::TrackInfo>,
    /// Join order, for stable listings.
    order: u64,
}

/// One room's participants and tracks.
#[derive(Debug)]
pub struct RoomState {
    pub sid: String,
    pub name: String,
    /// Seconds an empty room stays open, as told to clients in `Room`.
    pub empty_timeout: u32,
    created_at: i64,
    members: HashMap<String, Member>,
    next_order: u64,
}

/// Result of a join.
#[derive(Debug)]
pub struct Joined {
    pub participant: proto::ParticipantInfo,
    pub others: Vec<proto::ParticipantInfo>,
    /// Sid of an earlier session of the same identity, removed by this join.
    pub replaced: Option<String>,
    pub outbox: Outbox,
}

impl RoomState {
    pub fn new(name: &str, now_ms: i64) -> RoomState {
        RoomState {
            sid: new_sid("RM_"),
            name: name.to_owned(),
            empty_timeout: 0,
            created_at: now_ms,
            members: HashMap::new(),
            next_order: 0,
        }
    }

    /// The `Room` message for join responses and `RoomUpdate`. Hidden participants are
    /// not counted.
    pub fn room_info(&self) -> proto::Room {
        proto::Room {
            sid: self.sid.clone(),
            name: self.name.clone(),
            empty_timeout: self.empty_timeout,
            creation_time: self.created_at / 1000,
            creation_time_ms: self.created_at,
            num_participants: self.members.values().filter(|m| !m.hidden).count() as u32,
            num_publishers: self
                .members
                .values()
                .filter(|m| !m.info.tracks.is_empty())
                .count() as u32,
            active_recording: self.is_recording(),
            ..Default::default()
        }
    }

    /// Whether a recorder is present.
    pub fn is_recording(&self) -> bool {
        self.members.values().any(|m| m.recorder)
    }

    /// Whether nobody at all, hidden or not, is in the room.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `RoomUpdate` to everyone when `active_recording` is no longer `was_recording`.
    fn recording_update(&self, was_recording: bool) -> Outbox {
        if self.is_recording() == was_recording {
            return Outbox::new();
        }
        let room = self.room_info();
        self.members
            .keys()
            .map(|k| {
                (
                    k.clone(),
                    Message::RoomUpdate(proto::RoomUpdate {
                        room: Some(room.clone()),
                    }),
                )
            })
            .collect()
    }

    pub fn participant(&self, sid: &str) -> Option<&proto::ParticipantInfo> {
        self.members.get(sid).map(|m| &m.info)
    }

    pub fn sid_of(&self, identity: &str) -> Option<String> {
        self.members
            .values()
            .find(|m| m.info.identity == identity)
            .map(|m| m.info.sid.clone())
    }

    /// The visible participants in join order (what the others are told about).
    pub fn participants(&self) -> Vec<proto::ParticipantInfo> {
        self.listed(false)
    }

    /// The hidden participants in join order.
    pub fn hidden_participants(&self) -> Vec<proto::ParticipantInfo> {
        self.listed(true)
    }

    fn listed(&self, hidden: bool) -> Vec<proto::ParticipantInfo> {
        let mut members: Vec<&Member> = self
            .members
            .values()
            .filter(|m| m.hidden == hidden)
            .collect();
        members.sort_by_key(|m| m.order);
        members.into_iter().map(|m| m.info.clone()).collect()
    }

    /// Adds a participant. An earlier session with the same identity is removed first
    /// (told to leave with `DUPLICATE_IDENTITY`, and the others told it left). A hidden
    /// participant is not announced; a recorder makes the room recorded (`RoomUpdate`
    /// to everyone when that changes).
    pub fn join(&mut self, sid: &str, grant: &Grant, now_ms: i64) -> Joined {
        let mut outbox = Outbox::new();
        let was_recording = self.is_recording();
        let replaced = self.sid_of(&grant.identity);
        if let Some(old) = &replaced {
            outbox.push((
                old.clone(),
                Message::Leave(proto::LeaveRequest {
                    can_reconnect: false,
                    reason: proto::DisconnectReason::DuplicateIdentity as i32,
                    action: proto::leave_request::Action::Disconnect as i32,
                    regions: None,
                }),
            ));
            outbox.extend(self.leave(old));
        }
        let info = proto::ParticipantInfo {
            sid: sid.to_owned(),
            identity: grant.identity.clone(),
            name: grant.name.clone(),
            metadata: grant.metadata.clone(),
            state: proto::participant_info::State::Joined as i32,
            joined_at: now_ms / 1000,
            joined_at_ms: now_ms,
            version: 1,
            permission: Some(proto::ParticipantPermission {
                can_subscribe: grant.can_subscribe,
                can_publish: grant.can_publish,
                can_publish_data: grant.can_publish_data,
                hidden: grant.hidden,
                #[allow(deprecated)] // still what livekit-client reads, beside `kind`
                recorder: grant.recorder,
                ..Default::default()
            }),
            kind: if grant.recorder {
                proto::participant_info::Kind::Egress as i32
            } else {
                proto::participant_info::Kind::Standard as i32
            },
            ..Default::default()
        };
        let others = self.participants();
        if !grant.hidden {
            for member in self.members.values() {
                outbox.push((
                    member.info.sid.clone(),
                    Message::Update(proto::ParticipantUpdate {
                        participants: vec![info.clone()],
                    }),
                ));
            }
        }
        self.members.insert(
            info.sid.clone(),
            Member {
                info: info.clone(),
                hidden: grant.hidden,
                recorder: grant.recorder,
                pending: HashMap::new(),
                order: self.next_order,
            },
        );
        self.next_order += 1;
        outbox.extend(self.recording_update(was_recording));
        Joined {
            participant: info,
            others,
            replaced,
            outbox,
        }
    }

    /// Removes a participant and tells the others. Unknown sids are a no-op.
    pub fn leave(&mut self, sid: &str) -> Outbox {
        let was_recording = self.is_recording();
        let Some(mut member) = self.members.remove(sid) else {
            return Outbox::new();
        };
        member.info.state = proto::participant_info::State::Disconnected as i32;
        member.info.version += 1;
        member.info.tracks.clear();
        let mut outbox = self.broadcast(&member.info, Some(sid));
        outbox.extend(self.recording_update(was_recording));
        outbox
    }

    // `layers`, `simulcast`, `stereo` and `disable_dtx` are deprecated in the protocol but
    // livekit-client 2.x still reads them, so they are filled in.
    #[allow(deprecated)]
    /// Handles `AddTrackRequest`: registers a pending track and answers with its TrackInfo.
    pub fn add_track(
        &mut self,
        sid: &str,
        req: &proto::AddTrackRequest,
    ) -> Result<proto::TrackInfo, StateError> {
        let member = self.members.get_mut(sid).ok_or(StateError::NoParticipant)?;
        let may_publish = member
            .info
            .permission
            .as_ref()
            .is_some_and(|p| p.can_publish);
        if !may_publish {
            return Err(StateError::CannotPublish);
        }
        if member.pending.contains_key(&req.cid) {
            return Err(StateError::DuplicateCid);
        }
        if member.pending.len() >= MAX_PENDING_TRACKS {
            return Err(StateError::TooManyPending);
        }
        let layers = if req.layers.is_empty() {
            req.simulcast_codecs
                .first()
                .map(|c| c.layers.clone())
                .unwrap_or_default()
        } else {
            req.layers.clone()
        };
        let mime_type = req
            .simulcast_codecs
            .iter()
            .find(|c| !c.codec.is_empty())
            .map(|c| c.codec.clone())
            .unwrap_or_default();
        let track = proto::TrackInfo {
            sid: new_sid("TR_"),
            r#type: req.r#type,
            name: req.name.clone(),
            muted: req.muted,
            width: req.width,
            height: req.height,
            simulcast: layers.len() > 1,
            disable_dtx: req.disable_dtx,
            source: req.source,
            layers,
            mime_type,
            stereo: req.stereo,
            disable_red: req.disable_red,
            encryption: req.encryption,
            stream: req.stream.clone(),
            audio_features: req.audio_features.clone(),
            backup_codec_policy: req.backup_codec_policy,
            ..Default::default()
        };
        member.pending.insert(req.cid.clone(), track.clone());
        Ok(track)
    }

    /// Media for a pending track arrived: the track becomes published and everyone learns
    /// of it. `cid` is the media's msid track id; when no pending track has that cid, the
    /// oldest pending track of the same `kind` is taken. Returns `None` when nothing matched.
    pub fn publish_pending(
        &mut self,
        sid: &str,
        cid: &str,
        kind: proto::TrackType,
        mime_type: &str,
    ) -> Option<(proto::TrackInfo, Outbox)> {
        let member = self.members.get_mut(sid)?;
        let key = if member.pending.contains_key(cid) {
            cid.to_owned()
        } else {
            member
                .pending
                .iter()
                .filter(|(_, t)| t.r#type == kind as i32)
                .min_by(|a, b| a.1.sid.cmp(&b.1.sid))
                .map(|(k, _)| k.clone())?
        };
        let mut track = member.pending.remove(&key)?;
        if track.mime_type.is_empty() || !track.mime_type.contains('/') {
            track.mime_type = mime_type.to_owned();
        }
        member.info.tracks.push(track.clone());
        member.info.is_publisher = true;
        member.info.state = proto::participant_info::State::Active as i32;
        member.info.version += 1;
        let info = member.info.clone();
        Some((track, self.broadcast(&info, None)))
    }

    /// Removes a published (or pending) track; tells the owner and the others.
    pub fn unpublish(&mut self, sid: &str, track_sid: &str) -> Result<Outbox, StateError> {
        let member = self.members.get_mut(sid).ok_or(StateError::NoParticipant)?;
        let before = member.info.tracks.len();
        member.info.tracks.retain(|t| t.sid != track_sid);
        member.pending.retain(|_, t| t.sid != track_sid);
        if member.info.tracks.len() == before {
            return Err(StateError::NoTrack);
        }
        member.info.version += 1;
        let info = member.info.clone();
        let mut outbox = vec![(
            sid.to_owned(),
            Message::TrackUnpublished(proto::TrackUnpublishedResponse {
                track_sid: track_sid.to_owned(),
            }),
        )];
        outbox.extend(self.broadcast(&info, Some(sid)));
        Ok(outbox)
    }

    /// Sets a track's muted flag. `by_server` also tells the owner with
    /// `SignalResponse.mute` (a client muting itself already knows). Setting the current
    /// value again changes nothing and sends nothing.
    pub fn set_muted(
        &mut self,
        sid: &str,
        track_sid: &str,
        muted: bool,
        by_server: bool,
    ) -> Result<Outbox, StateError> {
        let member = self.members.get_mut(sid).ok_or(StateError::NoParticipant)?;
        let track = member
            .info
            .tracks
            .iter_mut()
            .chain(member.pending.values_mut())
            .find(|t| t.sid == track_sid)
            .ok_or(StateError::NoTrack)?;
        if track.muted == muted {
            return Ok(Outbox::new());
        }
        track.muted = muted;
        let mut outbox = Outbox::new();
        if by_server {
            outbox.push((
                sid.to_owned(),
                Message::Mute(proto::MuteTrackRequest {
                    sid: track_sid.to_owned(),
                    muted,
                }),
            ));
        }
        member.info.version += 1;
        let info = member.info.clone();
        outbox.extend(self.broadcast(&info, None));
        Ok(outbox)
    }

    /// Sids of `sid`'s published tracks of `kind` (all kinds when `None`).
    pub fn tracks_of(&self, sid: &str, kind: Option<proto::TrackType>) -> Vec<String> {
        self.members
            .get(sid)
            .map(|m| {
                m.info
                    .tracks
                    .iter()
                    .filter(|t| kind.is_none_or(|k| t.r#type == k as i32))
                    .map(|t| t.sid.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `ParticipantUpdate{info}` to every member except `except`; nothing about a hidden
    /// participant.
    fn broadcast(&self, info: &proto::ParticipantInfo, except: Option<&str>) -> Outbox {
        if info.permission.as_ref().is_some_and(|p| p.hidden) {
            return Outbox::new();
        }
        self.members
            .keys()
            .filter(|k| Some(k.as_str()) != except)
            .map(|k| {
                (
                    k.clone(),
                    Message::Update(proto::ParticipantUpdate {
                        participants: vec![info.clone()],
                    }),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(identity: &str) -> Grant {
        Grant {
            identity: identity.into(),
            issued_at: 0,
            name: String::new(),
            metadata: String::new(),
            room: "r".into(),
            can_publish: true,
            can_subscribe: true,
            can_publish_data: true,
            hidden: false,
            recorder: false,
        }
    }

    fn recorder_grant() -> Grant {
        Grant {
            can_publish: false,
            can_publish_data: false,
            hidden: true,
            recorder: true,
            ..grant("recorder")
        }
    }

    fn room_updates(outbox: &Outbox) -> Vec<(&str, &proto::RoomUpdate)> {
        outbox
            .iter()
            .filter_map(|(to, m)| match m {
                Message::RoomUpdate(u) => Some((to.as_str(), u)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_hidden_participant_is_never_announced() {
        let mut room = RoomState::new("r", 0);
        let a = room
            .join(&new_sid("PA_"), &grant("alice"), 1)
            .participant
            .sid;
        let hidden = Grant {
            hidden: true,
            can_publish: false,
            can_publish_data: false,
            ..grant("ghost")
        };
        let h = room.join(&new_sid("PA_"), &hidden, 2);
        // The hidden one sees the others; the others are told nothing.
        assert_eq!(h.others.len(), 1);
        assert!(updates_for(&h.outbox, &a).is_empty());
        assert!(h.participant.permission.as_ref().unwrap().hidden);
        let h = h.participant.sid;
        // A later joiner does not see it among the others either.
        let b = room.join(&new_sid("PA_"), &grant("bob"), 3);
        assert_eq!(b.others.len(), 1);
        assert_eq!(b.others[0].identity, "alice");
        // ...but the hidden one learns of the newcomer.
        assert_eq!(updates_for(&b.outbox, &h).len(), 1);
        assert_eq!(room.room_info().num_participants, 2);
        assert_eq!(room.hidden_participants().len(), 1);
        assert_eq!(room.participants().len(), 2);
        // It cannot publish.
        assert_eq!(
            room.add_track(&h, &add_audio("c")),
            Err(StateError::CannotPublish)
        );
        // Its leaving is not announced; it still keeps the room from being empty.
        assert!(!room.is_empty());
        let outbox = room.leave(&h);
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_recorder_makes_the_room_recorded() {
        let mut room = RoomState::new("r", 0);
        let a = room
            .join(&new_sid("PA_"), &grant("alice"), 1)
            .participant
            .sid;
        assert!(!room.room_info().active_recording);
        let r = room.join(&new_sid("PA_"), &recorder_grant(), 2);
        assert_eq!(
            r.participant.kind,
            proto::participant_info::Kind::Egress as i32
        );
        let updates = room_updates(&r.outbox);
        // Everyone, the recorder included, learns that recording started.
        assert_eq!(updates.len(), 2);
        assert!(updates
            .iter()
            .all(|(_, u)| u.room.as_ref().unwrap().active_recording));
        assert!(updates.iter().any(|(to, _)| *to == a));
        let r = r.participant.sid;
        assert!(room.room_info().active_recording);
        // A join while recording: the join response's room says so, no new RoomUpdate.
        let b = room.join(&new_sid("PA_"), &grant("bob"), 3);
        assert!(room_updates(&b.outbox).is_empty());
        assert!(room.room_info().active_recording);
        // The recorder leaves: recording stops, the others are told.
        let outbox = room.leave(&r);
        let updates = room_updates(&outbox);
        assert_eq!(updates.len(), 2);
        assert!(updates
            .iter()
            .all(|(_, u)| !u.room.as_ref().unwrap().active_recording));
        assert!(!room.room_info().active_recording);
        // An ordinary participant leaving changes nothing about recording.
        assert!(room_updates(&room.leave(&b.participant.sid)).is_empty());
    }

    fn add_audio(cid: &str) -> proto::AddTrackRequest {
        proto::AddTrackRequest {
            cid: cid.into(),
            name: "mic".into(),
            r#type: proto::TrackType::Audio as i32,
            encryption: proto::encryption::Type::Gcm as i32,
            ..Default::default()
        }
    }

    fn updates_for<'a>(outbox: &'a Outbox, sid: &str) -> Vec<&'a proto::ParticipantUpdate> {
        outbox
            .iter()
            .filter(|(to, _)| to == sid)
            .filter_map(|(_, m)| match m {
                Message::Update(u) => Some(u),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn join_tells_the_others() {
        let mut room = RoomState::new("r", 0);
        let a = room.join(&new_sid("PA_"), &grant("alice"), 1);
        assert!(a.others.is_empty() && a.outbox.is_empty());
        assert!(a.participant.sid.starts_with("PA_"));
        let b = room.join(&new_sid("PA_"), &grant("bob"), 2);
        assert_eq!(b.others.len(), 1);
        assert_eq!(b.others[0].identity, "alice");
        let ups = updates_for(&b.outbox, &a.participant.sid);
        assert_eq!(ups.len(), 1);
        assert_eq!(ups[0].participants[0].identity, "bob");
        assert_eq!(room.room_info().num_participants, 2);
    }

    #[test]
    fn duplicate_identity_replaces_the_old_session() {
        let mut room = RoomState::new("r", 0);
        let first = room
            .join(&new_sid("PA_"), &grant("alice"), 1)
            .participant
            .sid;
        let second = room.join(&new_sid("PA_"), &grant("alice"), 2);
        assert_eq!(second.replaced.as_deref(), Some(first.as_str()));
        assert!(second
            .outbox
            .iter()
            .any(|(to, m)| to == &first && matches!(m, Message::Leave(_))));
        assert_eq!(room.participants().len(), 1);
    }

    #[test]
    fn publish_flow() {
        let mut room = RoomState::new("r", 0);
        let a = room
            .join(&new_sid("PA_"), &grant("alice"), 1)
            .participant
            .sid;
        let b = room.join(&new_sid("PA_"), &grant("bob"), 2).participant.sid;
        let track = room.add_track(&a, &add_audio("cid1")).unwrap();
        assert!(track.sid.starts_with("TR_"));
        assert_eq!(track.encryption, proto::encryption::Type::Gcm as i32);
        assert_eq!(
            room.add_track(&a, &add_audio("cid1")),
            Err(StateError::DuplicateCid)
        );
        // Not visible to others until media arrives.
        assert!(room.participant(&a).unwrap().tracks.is_empty());
        let (published, outbox) = room
            .publish_pending(&a, "cid1", proto::TrackType::Audio, "audio/opus")
            .unwrap();
        assert_eq!(published.sid, track.sid);
        assert_eq!(published.mime_type, "audio/opus");
        let ups = updates_for(&outbox, &b);
        assert_eq!(ups[0].participants[0].tracks[0].sid, track.sid);
        // A second arrival for the same cid matches nothing.
        assert!(room
            .publish_pending(&a, "cid1", proto::TrackType::Audio, "audio/opus")
            .is_none());
    }

    #[test]
    fn media_with_unknown_cid_matches_by_kind() {
        let mut room = RoomState::new("r", 0);
        let a = room
            .join(&new_sid("PA_"), &grant("alice"), 1)
            .participant
            .sid;
        room.add_track(&a, &add_audio("cid1")).unwrap();
        assert!(room
            .publish_pending(&a, "other", proto::TrackType::Video, "video/VP8")
            .is_none());
        assert!(room
            .publish_pending(&a, "other", proto::TrackType::Audio, "audio/opus")
            .is_some());
    }

    #[test]
    fn publishing_needs_permission() {
        let mut room = RoomState::new("r", 0);
        let viewer = Grant {
            can_publish: false,
            ..grant("viewer")
        };
        let v = room.join(&new_sid("PA_"), &viewer, 1).participant.sid;
        assert_eq!(
            room.add_track(&v, &add_audio("c")),
            Err(StateError::CannotPublish)
        );
        assert_eq!(
            room.add_track("PA_nobody", &add_audio("c")),
            Err(StateError::NoParticipant)
        );
        let a = room
            .join(&new_sid("PA_"), &grant("alice"), 2)
            .participant
            .sid;
        for i in 0..MAX_PENDING_TRACKS {
            room.add_track(&a, &add_audio(&format!("c{i}"))).unwrap();
        }
        assert_eq!(
            room.add_track(&a, &add_audio("one-too-many")),
            Err(StateError::TooManyPending)
        );
    }

    #[test]
    fn mute_by_client_and_by_server() {
        let mut room = RoomState::new("r", 0);
        let a = room
            .join(&new_sid("PA_"), &grant("alice"), 1)
            .participant
            .sid;
        let b = room.join(&new_sid("PA_"), &grant("bob"), 2).participant.sid;
        room.add_track(&a, &add_audio("c")).unwrap();
        let (track, _) = room
            .publish_pending(&a, "c", proto::TrackType::Audio, "audio/opus")
            .unwrap();
        let outbox = room.set_muted(&a, &track.sid, true, false).unwrap();
        assert!(!outbox.iter().any(|(_, m)| matches!(m, Message::Mute(_))));
        assert!(updates_for(&outbox, &b)[0].participants[0].tracks[0].muted);
        // Same value again: nothing to say.
        assert!(room
            .set_muted(&a, &track.sid, true, false)
            .unwrap()
            .is_empty());
        room.set_muted(&a, &track.sid, false, false).unwrap();
        let outbox = room.set_muted(&a, &track.sid, true, true).unwrap();
        assert!(outbox
            .iter()
            .any(|(to, m)| to == &a
                && matches!(m, Message::Mute(r) if r.muted && r.sid == track.sid)));
        assert_eq!(
            room.tracks_of(&a, Some(proto::TrackType::Audio)),
            vec![track.sid.clone()]
        );
        assert!(room.tracks_of(&a, Some(proto::TrackType::Video)).is_empty());
        assert_eq!(
            room.set_muted(&a, "TR_none", true, true),
            Err(StateError::NoTrack)
        );
    }

    #[test]
    fn leave_and_unpublish() {
        let mut room = RoomState::new("r", 0);
        let a = room
            .join(&new_sid("PA_"), &grant("alice"), 1)
            .participant
            .sid;
        let b = room.join(&new_sid("PA_"), &grant("bob"), 2).participant.sid;
        room.add_track(&a, &add_audio("c")).unwrap();
        let (track, _) = room
            .publish_pending(&a, "c", proto::TrackType::Audio, "audio/opus")
            .unwrap();
        let outbox = room.unpublish(&a, &track.sid).unwrap();
        assert!(outbox
            .iter()
            .any(|(to, m)| to == &a && matches!(m, Message::TrackUnpublished(_))));
        assert!(updates_for(&outbox, &b)[0].participants[0]
            .tracks
            .is_empty());
        let outbox = room.leave(&a);
        let ups = updates_for(&outbox, &b);
        assert_eq!(
            ups[0].participants[0].state,
            proto::participant_info::State::Disconnected as i32
        );
        assert!(room.leave(&a).is_empty());
        room.leave(&b);
        assert!(room.is_empty());
    }
}
