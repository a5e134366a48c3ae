//! The stretch of the stream the consumers read last, kept for the consumers behind. In
//! steady state every consumer reads the same events one after another (each waits for
//! the one before it), and a sled range scan plus two point reads per event per consumer
//! was 7 % of a send's server CPU. The window is kept whole — it holds every event between
//! its bounds — so a read inside it is answered from memory; what it returns is what a
//! read from storage returned a moment earlier, which a consumer could have made then.

use std::{collections::VecDeque, sync::Mutex};

use crate::Result;

/// Events kept at most; the oldest go first.
const KEEP: usize = 1024;

/// The window over the stream: every event at a position in `(after, end]`, oldest first.
pub(super) struct Recent<T> {
    window: Mutex<Window<T>>,
}

struct Window<T> {
    after: u64,
    end: u64,
    events: VecDeque<(u64, T)>,
}

impl<T: Clone> Recent<T> {
    pub(super) fn new() -> Recent<T> {
        Recent {
            window: Mutex::new(Window {
                after: 0,
                end: 0,
                events: VecDeque::new(),
            }),
        }
    }

    /// The events after position `after` up to `upto` included, oldest first, at most
    /// `limit`: from the window when it covers them, else from `load` (same arguments),
    /// whose answer then moves the window forward.
    pub(super) fn read(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
        load: impl FnOnce(u64, u64, usize) -> Result<Vec<(u64, T)>>,
    ) -> Result<Vec<(u64, T)>> {
        if limit == 0 || upto <= after {
            return Ok(Vec::new());
        }
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if after >= w.after && upto <= w.end {
            return Ok(w
                .events
                .iter()
                .filter(|(pos, _)| *pos > after && *pos <= upto)
                .take(limit)
                .cloned()
                .collect());
        }
        let loaded = load(after, upto, limit)?;
        // Where the answer is complete up to: a full answer stops at its last event.
        let covered = match loaded.last() {
            Some((last, _)) if loaded.len() >= limit => *last,
            _ => upto,
        };
        if covered > w.end {
            if after >= w.after && after <= w.end {
                // It continues the window.
                while w.events.back().is_some_and(|(pos, _)| *pos > after) {
                    w.events.pop_back();
                }
            } else {
                // A stretch ahead of the window (or starting before it): it replaces it. A
                // consumer reading behind the window leaves it alone.
                w.events.clear();
                w.after = after;
            }
            w.events.extend(loaded.iter().cloned());
            w.end = covered;
            while w.events.len() > KEEP {
                if let Some((pos, _)) = w.events.pop_front() {
                    w.after = pos;
                }
            }
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A stream with an event at every third position.
    fn stream(after: u64, upto: u64, limit: usize) -> Result<Vec<(u64, u64)>> {
        Ok((after + 1..=upto)
            .filter(|p| p % 3 == 0)
            .take(limit)
            .map(|p| (p, p * 10))
            .collect())
    }

    #[test]
    fn consumers_behind_read_the_window_and_get_what_storage_gives() {
        let recent = Recent::new();
        let loads = Cell::new(0);
        let read = |after, upto, limit| {
            recent
                .read(after, upto, limit, |a, u, l| {
                    loads.set(loads.get() + 1);
                    stream(a, u, l)
                })
                .unwrap()
        };
        // Every answer equals a read from storage, whichever way it is made.
        let cases = [
            (0, 10, 100),
            (0, 10, 100),
            (2, 9, 100),
            (3, 10, 2),
            (10, 20, 100),
            (0, 20, 100),
            (4, 17, 1),
            (20, 40, 3),
            (26, 30, 100),
            (1, 5, 100),
            (30, 30, 100),
            (5, 2, 100),
        ];
        for (after, upto, limit) in cases {
            assert_eq!(
                read(after, upto, limit),
                stream(after, upto, limit).unwrap(),
                "({after}, {upto}] limit {limit}"
            );
        }
        // Loaded: (0,10], (10,20] continuing it, (20,40] cut at its third event (27), then
        // (26,30] past the window's end; the rest came from the window.
        assert_eq!(loads.get(), 4);
        assert_eq!(read(12, 30, 100), stream(12, 30, 100).unwrap());
        assert_eq!(loads.get(), 4);
    }

    #[test]
    fn the_window_keeps_the_newest_events_and_stays_whole() {
        let recent = Recent::new();
        let loads = Cell::new(0);
        let load = |a, u, l| {
            loads.set(loads.get() + 1);
            stream(a, u, l)
        };
        let end = 3 * (KEEP as u64 + 100);
        recent.read(0, end, usize::MAX, load).unwrap();
        // The oldest events went: a read that reaches them loads again.
        let newest = recent.read(end - 30, end, 100, load).unwrap();
        assert_eq!(newest, stream(end - 30, end, 100).unwrap());
        assert_eq!(loads.get(), 1);
        let oldest = recent.read(0, 30, 100, load).unwrap();
        assert_eq!(oldest, stream(0, 30, 100).unwrap());
        assert_eq!(loads.get(), 2);
        // A read behind the window leaves it as it was.
        recent.read(end - 30, end, 100, load).unwrap();
        assert_eq!(loads.get(), 2);
    }
}
