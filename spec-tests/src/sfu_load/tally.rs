//! What subscribers received: per (subscriber, track) which stamped packets arrived (a
//! bitset, so duplicates from retransmissions count once) and the added latency of the
//! measured ones.

use std::sync::Mutex;

use hdrhistogram::Histogram;

use super::synth::Stamp;

/// Highest packet counter tracked per track (bounds memory: 1 bit per packet).
pub const MAX_COUNTER: u32 = 1 << 24;

/// One subscriber's view of every published track.
pub struct Tally {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Per track: bit `counter` set once that packet arrived.
    seen: Vec<Vec<u64>>,
    /// Per track: packets arrived at all (any phase, duplicates included).
    any: Vec<u64>,
    /// Unique measured packets.
    measured: u64,
    duplicates: u64,
    /// Added latency of unique measured packets, microseconds.
    latency_us: Histogram<u64>,
}

/// Sums over tallies.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub measured: u64,
    pub duplicates: u64,
    pub latency_us: Option<Histogram<u64>>,
}

impl Tally {
    pub fn new(tracks: usize) -> Tally {
        Tally {
            inner: Mutex::new(Inner {
                seen: vec![Vec::new(); tracks],
                any: vec![0; tracks],
                measured: 0,
                duplicates: 0,
                latency_us: new_histogram(),
            }),
        }
    }

    /// Records a packet received at `now_ns` (same epoch as the stamp).
    pub fn record(&self, payload: &[u8], now_ns: u64) {
        let Some(stamp) = Stamp::read(payload) else {
            return;
        };
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let track = usize::from(stamp.track);
        if track >= inner.seen.len() || stamp.counter >= MAX_COUNTER {
            return;
        }
        inner.any[track] += 1;
        let (word, bit) = ((stamp.counter / 64) as usize, stamp.counter % 64);
        let seen = &mut inner.seen[track];
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        if seen[word] & (1 << bit) != 0 {
            inner.duplicates += 1;
            return;
        }
        seen[word] |= 1 << bit;
        if stamp.measured {
            inner.measured += 1;
            let us = now_ns.saturating_sub(stamp.sent_ns) / 1000;
            let _ = inner.latency_us.record(us.max(1));
        }
    }

    /// Whether a packet of every track arrived.
    pub fn has_all_tracks(&self) -> bool {
        self.inner
            .lock()
            .map(|i| i.any.iter().all(|&n| n > 0))
            .unwrap_or(false)
    }

    /// Indices of the tracks no packet arrived from.
    pub fn missing_tracks(&self) -> Vec<usize> {
        self.inner
            .lock()
            .map(|i| (0..i.any.len()).filter(|&t| i.any[t] == 0).collect())
            .unwrap_or_default()
    }

    /// Unique measured packets so far.
    pub fn measured(&self) -> u64 {
        self.inner.lock().map(|i| i.measured).unwrap_or(0)
    }

    /// Adds this tally into `totals`.
    pub fn add_to(&self, totals: &mut Totals) {
        let Ok(inner) = self.inner.lock() else {
            return;
        };
        totals.measured += inner.measured;
        totals.duplicates += inner.duplicates;
        match &mut totals.latency_us {
            Some(h) => {
                let _ = h.add(&inner.latency_us);
            }
            None => totals.latency_us = Some(inner.latency_us.clone()),
        }
    }
}

/// Microseconds from 1 µs to 60 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu_load::synth::AudioSource;

    #[test]
    fn counts_unique_measured_packets_and_latency() {
        let tally = Tally::new(2);
        let mut a = AudioSource::new(0, 50);
        let mut b = AudioSource::new(1, 50);
        let warm = a.next(false, 0);
        tally.record(&warm.payload, 1_000_000);
        assert!(!tally.has_all_tracks());
        assert_eq!(tally.missing_tracks(), vec![1]);
        let p1 = a.next(true, 10_000_000);
        let p2 = b.next(true, 10_000_000);
        tally.record(&p1.payload, 12_000_000); // 2 ms
        tally.record(&p1.payload, 13_000_000); // duplicate
        tally.record(&p2.payload, 14_000_000); // 4 ms
        tally.record(b"not a stamped payload", 0);
        assert!(tally.has_all_tracks());
        assert_eq!(tally.measured(), 2);
        let mut totals = Totals::default();
        tally.add_to(&mut totals);
        tally.add_to(&mut totals);
        assert_eq!(totals.measured, 4);
        assert_eq!(totals.duplicates, 2);
        let h = totals.latency_us.unwrap();
        assert_eq!(h.len(), 4);
        assert!((1990..=2010).contains(&h.min()));
        assert!((3990..=4010).contains(&h.max()));
    }
}
