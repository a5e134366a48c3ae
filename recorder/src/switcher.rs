//! Which participant's video goes into the recording: the loudest active speaker that has
//! a video track; while nobody speaks, whoever was shown stays (at first, the first video
//! track). A switch asks the new source for a key frame and keeps writing the old source
//! until that key frame arrives, so the file never holds a frame its decoder cannot use.
//! Pure logic: time comes in as milliseconds, requests go out as [`Action`]s.

use std::collections::HashMap;

/// How often an unanswered key-frame request is repeated.
const REQUEST_EVERY_MS: u64 = 1000;

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a picture loss indication for this track.
    RequestKeyframe(String),
}

#[derive(Debug, Clone)]
struct Shown {
    track: String,
    /// No key frame of it written yet: its frames are dropped until one comes.
    waiting: bool,
}

/// The video source choice.
#[derive(Debug, Default)]
pub struct Switcher {
    /// (track sid, owner participant sid) in the order they appeared.
    tracks: Vec<(String, String)>,
    /// Active speakers' levels by participant sid.
    speaking: HashMap<String, f32>,
    current: Option<Shown>,
    /// The source switched to once its key frame arrives.
    pending: Option<String>,
    /// When a key frame was last requested (ms), for repeats.
    last_request_ms: Option<u64>,
}

impl Switcher {
    /// The track whose frames are being written, if any.
    #[cfg(test)]
    pub fn current(&self) -> Option<&str> {
        self.current.as_ref().map(|c| c.track.as_str())
    }

    /// The track being switched to, if any.
    #[cfg(test)]
    pub fn pending(&self) -> Option<&str> {
        self.pending.as_deref()
    }

    /// A video track of participant `owner` appeared.
    pub fn add_track(&mut self, track: &str, owner: &str, now_ms: u64) -> Vec<Action> {
        if !self.tracks.iter().any(|(t, _)| t == track) {
            self.tracks.push((track.to_owned(), owner.to_owned()));
        }
        self.retarget(now_ms)
    }

    /// A video track ended (unpublished, or its owner left).
    pub fn remove_track(&mut self, track: &str, now_ms: u64) -> Vec<Action> {
        self.tracks.retain(|(t, _)| t != track);
        if self.pending.as_deref() == Some(track) {
            self.pending = None;
        }
        if self.current.as_ref().is_some_and(|c| c.track == track) {
            // Promote the pending source (still waiting for its key frame), if any.
            self.current = self.pending.take().map(|track| Shown {
                track,
                waiting: true,
            });
        }
        self.retarget(now_ms)
    }

    /// The SFU's speaker changes: (participant sid, level, active).
    pub fn speakers_changed(
        &mut self,
        changes: &[(String, f32, bool)],
        now_ms: u64,
    ) -> Vec<Action> {
        for (sid, level, active) in changes {
            if *active {
                self.speaking.insert(sid.clone(), *level);
            } else {
                self.speaking.remove(sid);
            }
        }
        self.retarget(now_ms)
    }

    /// A frame of `track` is complete: whether to write it. A key frame of the pending
    /// source completes the switch.
    pub fn on_frame(&mut self, track: &str, keyframe: bool) -> bool {
        if keyframe && self.pending.as_deref() == Some(track) {
            self.pending = None;
            self.current = Some(Shown {
                track: track.to_owned(),
                waiting: false,
            });
            self.last_request_ms = None;
            return true;
        }
        match &mut self.current {
            Some(shown) if shown.track == track => {
                if shown.waiting && keyframe {
                    shown.waiting = false;
                    if self.pending.is_none() {
                        self.last_request_ms = None;
                    }
                }
                !shown.waiting
            }
            _ => false,
        }
    }

    /// Repeats a key-frame request that has gone unanswered for a while.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let waiting_for = self.pending.clone().or_else(|| {
            self.current
                .as_ref()
                .filter(|c| c.waiting)
                .map(|c| c.track.clone())
        });
        match (waiting_for, self.last_request_ms) {
            (Some(track), Some(at)) if now_ms.saturating_sub(at) >= REQUEST_EVERY_MS => {
                self.last_request_ms = Some(now_ms);
                vec![Action::RequestKeyframe(track)]
            }
            _ => Vec::new(),
        }
    }

    /// The track that should be shown.
    fn target(&self) -> Option<String> {
        let mut speakers: Vec<(&String, &f32)> = self.speaking.iter().collect();
        speakers.sort_by(|a, b| b.1.total_cmp(a.1).then_with(|| a.0.cmp(b.0)));
        for (sid, _) in speakers {
            if let Some((track, _)) = self.tracks.iter().find(|(_, owner)| owner == sid) {
                return Some(track.clone());
            }
        }
        // Nobody with video speaks: keep what is shown (or about to be), else the first.
        self.pending
            .clone()
            .or_else(|| self.current.as_ref().map(|c| c.track.clone()))
            .or_else(|| self.tracks.first().map(|(t, _)| t.clone()))
    }

    fn retarget(&mut self, now_ms: u64) -> Vec<Action> {
        let Some(target) = self.target() else {
            self.current = None;
            self.pending = None;
            return Vec::new();
        };
        if self.current.as_ref().is_some_and(|c| c.track == target) {
            self.pending = None;
            return Vec::new();
        }
        if self.pending.as_deref() == Some(target.as_str()) {
            return Vec::new();
        }
        if self.current.is_none() {
            self.current = Some(Shown {
                track: target.clone(),
                waiting: true,
            });
        } else {
            self.pending = Some(target.clone());
        }
        self.last_request_ms = Some(now_ms);
        vec![Action::RequestKeyframe(target)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(track: &str) -> Vec<Action> {
        vec![Action::RequestKeyframe(track.into())]
    }

    #[test]
    fn the_first_video_is_shown_from_its_first_keyframe() {
        let mut s = Switcher::default();
        assert_eq!(s.add_track("TR_a", "PA_a", 0), req("TR_a"));
        assert_eq!(s.add_track("TR_b", "PA_b", 0), vec![]);
        assert_eq!(s.current(), Some("TR_a"));
        // Inter frames before the first key frame cannot be decoded: dropped.
        assert!(!s.on_frame("TR_a", false));
        assert!(s.on_frame("TR_a", true));
        assert!(s.on_frame("TR_a", false));
        assert!(!s.on_frame("TR_b", true));
    }

    #[test]
    fn switching_to_a_speaker_waits_for_its_keyframe() {
        let mut s = Switcher::default();
        s.add_track("TR_a", "PA_a", 0);
        s.add_track("TR_b", "PA_b", 0);
        assert!(s.on_frame("TR_a", true));
        // Bob speaks: ask him for a key frame, keep writing Alice meanwhile.
        assert_eq!(
            s.speakers_changed(&[("PA_b".into(), 0.8, true)], 10),
            req("TR_b")
        );
        assert_eq!(s.pending(), Some("TR_b"));
        assert!(s.on_frame("TR_a", false));
        assert!(!s.on_frame("TR_b", false));
        // No answer within a second: ask again.
        assert_eq!(s.tick(500), vec![]);
        assert_eq!(s.tick(1010), req("TR_b"));
        assert!(s.on_frame("TR_b", true));
        assert_eq!(s.current(), Some("TR_b"));
        assert!(!s.on_frame("TR_a", false));
        assert!(!s.on_frame("TR_a", true));
        assert_eq!(s.tick(5000), vec![]);
        // Bob falls silent: he stays on screen.
        assert_eq!(
            s.speakers_changed(&[("PA_b".into(), 0.0, false)], 6000),
            vec![]
        );
        assert_eq!(s.current(), Some("TR_b"));
    }

    #[test]
    fn the_loudest_speaker_with_video_wins() {
        let mut s = Switcher::default();
        s.add_track("TR_a", "PA_a", 0);
        s.add_track("TR_b", "PA_b", 0);
        s.on_frame("TR_a", true);
        // Carol (no video) is loudest; Bob is next.
        let actions = s.speakers_changed(
            &[
                ("PA_c".into(), 0.9, true),
                ("PA_b".into(), 0.5, true),
                ("PA_a".into(), 0.2, true),
            ],
            0,
        );
        assert_eq!(actions, req("TR_b"));
    }

    #[test]
    fn the_shown_source_leaving_falls_back() {
        let mut s = Switcher::default();
        s.add_track("TR_a", "PA_a", 0);
        s.add_track("TR_b", "PA_b", 0);
        s.on_frame("TR_a", true);
        // Alice leaves while shown: Bob is next, from his key frame.
        assert_eq!(s.remove_track("TR_a", 100), req("TR_b"));
        assert_eq!(s.current(), Some("TR_b"));
        assert!(!s.on_frame("TR_b", false));
        assert!(s.on_frame("TR_b", true));
        // A switch pending to a source that leaves is dropped.
        s.add_track("TR_c", "PA_c", 200);
        s.speakers_changed(&[("PA_c".into(), 0.5, true)], 300);
        assert_eq!(s.pending(), Some("TR_c"));
        assert_eq!(s.remove_track("TR_c", 400), vec![]);
        assert_eq!(s.pending(), None);
        assert_eq!(s.current(), Some("TR_b"));
        // Everyone gone: nothing shown.
        s.remove_track("TR_b", 500);
        assert_eq!(s.current(), None);
        assert!(!s.on_frame("TR_b", true));
    }

    #[test]
    fn a_pending_source_is_promoted_when_the_current_one_leaves() {
        let mut s = Switcher::default();
        s.add_track("TR_a", "PA_a", 0);
        s.add_track("TR_b", "PA_b", 0);
        s.on_frame("TR_a", true);
        s.speakers_changed(&[("PA_b".into(), 0.5, true)], 0);
        // Bob is pending; Alice leaves before his key frame: Bob waits for it as current.
        assert_eq!(s.remove_track("TR_a", 10), vec![]);
        assert_eq!(s.current(), Some("TR_b"));
        assert!(!s.on_frame("TR_b", false));
        assert!(s.on_frame("TR_b", true));
    }
}
