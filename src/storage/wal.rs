//! The sled engine's write-ahead log. sled makes a batch atomic by sealing its log buffer
//! before and after it and handing each buffer to its I/O thread pool (which wakes every
//! idle thread) to write and `sync_file_range`: two of those per batch were most of the
//! cost of a send. So the sled engine applies a batch's writes to sled one by one, and
//! atomicity and durability come from this log instead:
//!
//! - A batch's record is written to the log file (a `write`, no sync) before any of its
//!   writes reaches sled, and records are numbered in the order their batches are applied
//!   (both under one lock). Each batch's last write to sled records its number.
//! - A group commit makes everything applied durable with one `fdatasync` of the log.
//! - sled is flushed in the background once the current file has grown past a checkpoint
//!   size; the files that flush covers are then removed.
//! - sled recovers from a crash to a prefix of its writes, which may end inside a batch; the
//!   number sled holds says which batches it has whole. On open, every later record is
//!   applied to sled again, in order: a record holds the whole new value of each key it
//!   writes, so this completes a torn batch and gives the state after the last record.
//!   After a process crash (`kill -9`) every record written is in the file, so no batch is
//!   left torn. After a power failure the log holds every acknowledged (synced) batch, but
//!   a batch never acknowledged could reach sled's file before its record reached the log's:
//!   such a batch may stay partly applied.
//!
//! A file is a sequence of records: `u32` payload length, `u32` CRC-32 of the payload (both
//! little-endian), payload. A payload is the record's number (`u64`) and the batch: `u32`
//! count, then per write `u32` key length, key, one byte (1 = put, 0 = remove) and for a put
//! `u32` value length, value. A crash can leave the last record of the newest file torn;
//! replay stops at the first record that is short or fails its checksum.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use crate::{Error, Result};

/// One write of a batch: the key and its new value, `None` for a removal.
pub(super) type Change = (Vec<u8>, Option<Vec<u8>>);

/// Log files are named `<number>.log`; numbers grow, replay goes in their order.
const SUFFIX: &str = "log";

/// The log of one sled database.
pub(super) struct Wal {
    dir: PathBuf,
    /// The file appended to and the last record number given. Held from a batch's record
    /// to the end of its application, so numbers follow the order of application.
    state: Mutex<State>,
    /// Held by a sync, so a later sync never overtakes an earlier one.
    syncing: Mutex<()>,
    /// A write, a sync or an application after its record failed: records after it could
    /// be lost on replay, or a batch is half applied, so nothing more is logged or synced.
    broken: AtomicBool,
    /// A checkpoint (sled flush, then removal of the files it covers) is under way.
    checkpointing: AtomicBool,
    /// File size past which a sync starts a new file and asks for a checkpoint.
    checkpoint_bytes: u64,
}

struct State {
    file: Arc<File>,
    number: u64,
    len: u64,
    last: u64,
    record: Vec<u8>,
}

/// The log held for one batch (see [`Wal::appender`]).
pub(super) struct Appender<'a> {
    wal: &'a Wal,
    state: MutexGuard<'a, State>,
}

impl Appender<'_> {
    /// Writes the record of the next batch, with `changes`, to the log file and returns
    /// its number: the caller then applies the changes and the number to sled, and calls
    /// [`Appender::applied`] with the outcome.
    pub(super) fn log(&mut self, changes: &[Change]) -> Result<u64> {
        let number = self.state.last + 1;
        let state = &mut *self.state;
        state.record.clear();
        encode_into(&mut state.record, number, changes);
        if let Err(e) = (&*state.file).write_all(&state.record) {
            self.wal.broken.store(true, Ordering::Release);
            return Err(e.into());
        }
        state.len += state.record.len() as u64;
        state.last = number;
        Ok(number)
    }

    /// Records the outcome of applying the logged batch to sled: a failure leaves it
    /// partly applied, so the log stops taking batches (a restart completes it).
    pub(super) fn applied<T>(self, outcome: Result<T>) -> Result<T> {
        if outcome.is_err() {
            self.wal.broken.store(true, Ordering::Release);
        }
        outcome
    }
}

impl Wal {
    /// Opens the log in `dir`, where sled holds the batches numbered up to `applied`:
    /// gives each later record of the files found to `replay` (number and changes), oldest
    /// first, then calls `checkpoint` (which must make everything replayed durable),
    /// removes those files and starts a new one.
    pub(super) fn open(
        dir: &Path,
        checkpoint_bytes: u64,
        applied: u64,
        replay: &mut dyn FnMut(u64, Vec<Change>) -> Result<()>,
        checkpoint: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let found = files(dir)?;
        let mut last = applied;
        let mut stopped = false;
        for (_, path) in &found {
            if stopped {
                // After a bad record nothing can be applied in order; a record after a
                // failed write was never acknowledged.
                tracing::warn!(file = %path.display(), "write-ahead log after a bad record ignored");
                continue;
            }
            let mut bytes = Vec::new();
            File::open(path)?.read_to_end(&mut bytes)?;
            let mut at = 0;
            while let Some((number, changes, next)) = decode(&bytes, at) {
                if number > last {
                    if number != last + 1 {
                        tracing::warn!(
                            expected = last + 1,
                            found = number,
                            "write-ahead log records missing; replay stops"
                        );
                        stopped = true;
                        break;
                    }
                    replay(number, changes)?;
                    last = number;
                }
                at = next;
            }
            if !stopped && at < bytes.len() {
                tracing::warn!(
                    file = %path.display(),
                    ignored_bytes = bytes.len() - at,
                    "write-ahead log ends in a torn record (a crash while writing it)"
                );
                stopped = true;
            }
        }
        if !found.is_empty() {
            checkpoint()?;
        }
        let number = found.last().map_or(1, |(n, _)| n + 1);
        let file = create(dir, number)?;
        for (_, path) in &found {
            std::fs::remove_file(path)?;
        }
        sync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                file: Arc::new(file),
                number,
                len: 0,
                last,
                record: Vec::new(),
            }),
            syncing: Mutex::new(()),
            broken: AtomicBool::new(false),
            checkpointing: AtomicBool::new(false),
            checkpoint_bytes,
        })
    }

    /// Holds the log for one batch: no other batch is logged or applied until the
    /// returned appender is dropped.
    pub(super) fn appender(&self) -> Result<Appender<'_>> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.check()?;
        Ok(Appender { wal: self, state })
    }

    fn check(&self) -> Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(Error::Storage(
                "the write-ahead log failed earlier; restart the server".into(),
            ));
        }
        Ok(())
    }

    /// Makes every record written so far durable. Returns the number of the newest file
    /// a checkpoint may remove when this sync started a new file for one (the caller
    /// flushes sled, then calls [`Wal::checkpointed`]).
    pub(super) fn sync(&self) -> Result<Option<u64>> {
        let _one = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        let (file, full) = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            self.check()?;
            (state.file.clone(), state.len >= self.checkpoint_bytes)
        };
        self.sync_file(&file)?;
        if !full || self.checkpointing.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        // Later records go to a new file; the full one goes once sled holds its batches.
        let started = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let covered = state.number;
            create(&self.dir, covered + 1).and_then(|file| {
                sync_dir(&self.dir)?;
                state.number = covered + 1;
                state.len = 0;
                Ok((covered, std::mem::replace(&mut state.file, Arc::new(file))))
            })
        };
        match started {
            Ok((covered, full)) => {
                // Records written to it since the sync above.
                self.sync_file(&full)?;
                Ok(Some(covered))
            }
            Err(e) => {
                // Keep appending to the full file; a later sync tries again.
                self.checkpointing.store(false, Ordering::Release);
                tracing::warn!(error = %e, "could not start a new write-ahead log file");
                Ok(None)
            }
        }
    }

    fn sync_file(&self, file: &File) -> Result<()> {
        file.sync_data().map_err(|e| {
            self.broken.store(true, Ordering::Release);
            e.into()
        })
    }

    /// Whether a checkpoint is under way.
    #[cfg(test)]
    pub(super) fn checkpointing(&self) -> bool {
        self.checkpointing.load(Ordering::Acquire)
    }

    /// Called once sled is flushed after [`Wal::sync`] returned `covered` (or the flush
    /// failed: then the files stay and are replayed after a restart).
    pub(super) fn checkpointed(&self, covered: u64, flushed: Result<()>) {
        let removed = flushed.and_then(|()| {
            for (number, path) in files(&self.dir)? {
                if number <= covered {
                    std::fs::remove_file(path)?;
                }
            }
            sync_dir(&self.dir)
        });
        if let Err(e) = removed {
            tracing::warn!(error = %e, "write-ahead log checkpoint failed; the log is kept");
        }
        self.checkpointing.store(false, Ordering::Release);
    }
}

/// Appends the record of batch `number` with `changes` to `out`.
fn encode_into(out: &mut Vec<u8>, number: u64, changes: &[Change]) {
    let start = out.len();
    let size: usize = changes
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, |v| 4 + v.len()))
        .sum();
    out.reserve(20 + size);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(&(changes.len() as u32).to_le_bytes());
    for (key, value) in changes {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        match value {
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            None => out.push(0),
        }
    }
    let payload_len = (out.len() - start - 8) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at `at` of `bytes`: its number, its changes and where the next
/// record starts; `None` at the end or at a short or corrupt record.
fn decode(bytes: &[u8], at: usize) -> Option<(u64, Vec<Change>, usize)> {
    let header = bytes.get(at..at.checked_add(8)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let end = at.checked_add(8)?.checked_add(len)?;
    let payload = bytes.get(at + 8..end)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let mut reader = Reader { bytes: payload };
    let number = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
    let count = reader.u32()?;
    let mut changes = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let key_len = reader.u32()? as usize;
        let key = reader.take(key_len)?.to_vec();
        let value = match reader.take(1)?[0] {
            1 => {
                let value_len = reader.u32()? as usize;
                Some(reader.take(value_len)?.to_vec())
            }
            0 => None,
            _ => return None,
        };
        changes.push((key, value));
    }
    reader.bytes.is_empty().then_some((number, changes, end))
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// The log files in `dir`, oldest first.
fn files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .extension()
            .filter(|ext| *ext == SUFFIX)
            .and_then(|_| path.file_stem()?.to_str()?.parse::<u64>().ok());
        if let Some(number) = number {
            found.push((number, path));
        }
    }
    found.sort();
    Ok(found)
}

fn create(dir: &Path, number: u64) -> Result<File> {
    Ok(OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(dir.join(format!("{number:020}.{SUFFIX}")))?)
}

/// Makes the creation and removal of files in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Change {
        (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))
    }

    fn record(number: u64, changes: &[Change]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&mut out, number, changes);
        out
    }

    /// Opens the log as sled holding batches up to `applied`; returns what it replays.
    fn open(dir: &Path, limit: u64, applied: u64) -> (Wal, Vec<(u64, Vec<Change>)>, usize) {
        let mut replayed = Vec::new();
        let mut checkpoints = 0;
        let wal = Wal::open(
            dir,
            limit,
            applied,
            &mut |number, changes| {
                replayed.push((number, changes));
                Ok(())
            },
            &mut || {
                checkpoints += 1;
                Ok(())
            },
        )
        .unwrap();
        (wal, replayed, checkpoints)
    }

    fn log(wal: &Wal, changes: &[Change]) -> u64 {
        let mut appender = wal.appender().unwrap();
        let number = appender.log(changes).unwrap();
        appender.applied(Ok(())).unwrap();
        number
    }

    #[test]
    fn records_round_trip_and_a_torn_or_corrupt_one_is_refused() {
        let changes = vec![put("a", "1"), (b"b".to_vec(), None), put("", "")];
        let bytes = record(7, &changes);
        assert_eq!(decode(&bytes, 0), Some((7, changes.clone(), bytes.len())));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], 0), None, "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&flipped, 0), None);
    }

    #[test]
    fn synced_records_after_sleds_replay_in_order_and_unsynced_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, replayed, checkpoints) = open(dir.path(), 1 << 20, 0);
        assert!(replayed.is_empty());
        assert_eq!(checkpoints, 0);
        for i in 1..=3 {
            assert_eq!(log(&wal, &[put("k", &i.to_string())]), i);
        }
        // An appender dropped before logging takes no number.
        drop(wal.appender().unwrap());
        assert_eq!(wal.sync().unwrap(), None);
        drop(wal);
        // sled holds batch 1: 2 and 3 are replayed.
        let (wal, replayed, checkpoints) = open(dir.path(), 1 << 20, 1);
        assert_eq!(
            replayed,
            vec![(2, vec![put("k", "2")]), (3, vec![put("k", "3")])]
        );
        assert_eq!(checkpoints, 1);
        assert_eq!(log(&wal, &[put("k", "4")]), 4);
        drop(wal);
        // Replayed files are removed once checkpointed; sled ahead of the log is kept.
        let (wal, replayed, _) = open(dir.path(), 1 << 20, 9);
        assert_eq!(replayed, vec![]);
        assert_eq!(log(&wal, &[put("k", "10")]), 10);
    }

    #[test]
    fn a_failed_application_stops_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(dir.path(), 1 << 20, 0);
        let mut appender = wal.appender().unwrap();
        appender.log(&[put("k", "1")]).unwrap();
        let failed: Result<()> = appender.applied(Err(Error::Storage("disk gone".into())));
        assert!(failed.is_err());
        assert!(wal.appender().is_err());
        assert!(wal.sync().is_err());
        drop(wal);
        // The record is in the file: a restart completes the batch.
        let (_wal, replayed, _) = open(dir.path(), 1 << 20, 0);
        assert_eq!(replayed, vec![(1, vec![put("k", "1")])]);
    }

    #[test]
    fn a_full_file_is_rotated_and_removed_once_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(dir.path(), 64, 0);
        log(&wal, &[put("a", &"x".repeat(100))]);
        let covered = wal
            .sync()
            .unwrap()
            .expect("past the limit: a checkpoint is due");
        // One checkpoint at a time.
        log(&wal, &[put("b", &"y".repeat(100))]);
        assert_eq!(wal.sync().unwrap(), None);
        assert_eq!(files(dir.path()).unwrap().len(), 2);
        // A failed flush keeps the files.
        wal.checkpointed(covered, Err(Error::Storage("flush failed".into())));
        assert_eq!(files(dir.path()).unwrap().len(), 2);
        let covered = wal.sync().unwrap().expect("the next sync tries again");
        wal.checkpointed(covered, Ok(()));
        let left = files(dir.path()).unwrap();
        assert_eq!(left.len(), 1);
        assert!(left[0].0 > covered);
        drop(wal);
        let (_wal, replayed, _) = open(dir.path(), 64, 2);
        assert!(replayed.is_empty());
    }

    #[test]
    fn replay_stops_at_a_bad_record_or_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let mut torn = record(2, &[put("b", "2")]);
        torn.truncate(torn.len() - 1);
        std::fs::write(
            dir.path().join(format!("{:020}.log", 1)),
            [record(1, &[put("a", "1")]), torn].concat(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(format!("{:020}.log", 2)),
            record(3, &[put("c", "3")]),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"not a log").unwrap();
        let (wal, replayed, checkpoints) = open(dir.path(), 1 << 20, 0);
        assert_eq!(replayed, vec![(1, vec![put("a", "1")])]);
        assert_eq!(checkpoints, 1);
        assert_eq!(log(&wal, &[put("b", "again")]), 2);
        assert!(dir.path().join("notes.txt").exists());
        drop(wal);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(format!("{:020}.log", 1)),
            [record(1, &[put("a", "1")]), record(3, &[put("c", "3")])].concat(),
        )
        .unwrap();
        let (_wal, replayed, _) = open(dir.path(), 1 << 20, 0);
        assert_eq!(replayed, vec![(1, vec![put("a", "1")])]);
    }
}
