//! Active-speaker detection from the audio-level RTP header extension (RFC 6464), turned
//! into LiveKit's `SpeakersChanged` updates.

use std::collections::HashMap;

use livekit_protocol as proto;

/// Packets at or louder than this (dBov, 0 is loudest, 127 silence) count as speech.
pub const SPEECH_DBOV: u8 = 40;
/// Share of a window's packets that must be speech for the track to be speaking.
const SPEECH_SHARE: f32 = 0.3;
/// A level change smaller than this is not worth an update while someone keeps speaking.
const LEVEL_STEP: f32 = 0.1;

/// Accumulates one audio track's levels over an observation window.
#[derive(Debug, Default, Clone)]
pub struct LevelMeter {
    speech: u32,
    total: u32,
    /// Sum of linear amplitudes of the speech packets.
    amplitude: f32,
}

impl LevelMeter {
    /// Records one packet's level in dBov (the extension's low 7 bits).
    pub fn add(&mut self, dbov: u8) {
        let dbov = dbov & 0x7f;
        self.total += 1;
        if dbov <= SPEECH_DBOV {
            self.speech += 1;
            self.amplitude += 10f32.powf(-f32::from(dbov) / 20.0);
        }
    }

    /// Ends the window: the speaking level in (0, 1] (1 loudest), or `None` when silent.
    pub fn take(&mut self) -> Option<f32> {
        let meter = std::mem::take(self);
        if meter.total == 0 || (meter.speech as f32) < SPEECH_SHARE * meter.total as f32 {
            return None;
        }
        Some((meter.amplitude / meter.speech as f32).clamp(0.0, 1.0))
    }
}

/// Who is speaking now, to send only the changes.
#[derive(Debug, Default)]
pub struct Speakers {
    active: HashMap<String, f32>,
}

impl Speakers {
    /// Takes this window's levels by participant sid and returns the changes: new
    /// speakers and clear level changes (`active: true`), stopped speakers (`active: false`).
    pub fn update(&mut self, now: HashMap<String, f32>) -> Vec<proto::SpeakerInfo> {
        let mut changes = Vec::new();
        for (sid, level) in &now {
            let changed = self
                .active
                .get(sid)
                .is_none_or(|old| (old - level).abs() >= LEVEL_STEP);
            if changed {
                changes.push(proto::SpeakerInfo {
                    sid: sid.clone(),
                    level: *level,
                    active: true,
                });
                self.active.insert(sid.clone(), *level);
            }
        }
        let stopped: Vec<String> = self
            .active
            .keys()
            .filter(|sid| !now.contains_key(*sid))
            .cloned()
            .collect();
        for sid in stopped {
            self.active.remove(&sid);
            changes.push(proto::SpeakerInfo {
                sid,
                level: 0.0,
                active: false,
            });
        }
        changes.sort_by(|a, b| b.level.total_cmp(&a.level));
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_detects_speech() {
        let mut meter = LevelMeter::default();
        assert_eq!(meter.take(), None);
        for _ in 0..10 {
            meter.add(127);
        }
        assert_eq!(meter.take(), None, "silence");
        for i in 0..10 {
            meter.add(if i % 2 == 0 { 0 } else { 127 });
        }
        let level = meter.take().unwrap();
        assert!((level - 1.0).abs() < 1e-6);
        for _ in 0..10 {
            meter.add(20 | 0x80); // voice bit set
        }
        let level = meter.take().unwrap();
        assert!((level - 0.1).abs() < 1e-3);
    }

    #[test]
    fn speakers_report_changes_only() {
        let mut speakers = Speakers::default();
        let changes = speakers.update(HashMap::from([("PA_a".to_owned(), 0.5)]));
        assert_eq!(changes.len(), 1);
        assert!(changes[0].active && changes[0].sid == "PA_a");
        assert!(speakers
            .update(HashMap::from([("PA_a".to_owned(), 0.55)]))
            .is_empty());
        let changes = speakers.update(HashMap::from([("PA_b".to_owned(), 0.9)]));
        assert_eq!(changes.len(), 2);
        assert!(changes[0].active && changes[0].sid == "PA_b");
        assert!(!changes[1].active && changes[1].sid == "PA_a");
        assert!(speakers.update(HashMap::new()).iter().all(|s| !s.active));
        assert!(speakers.update(HashMap::new()).is_empty());
    }
}
