//! Database snapshots for online backup: every pair of the engine, written while no batch
//! is applied, in a self-checking stream: `MYELIN-SNAPSHOT 1\n`, then per pair a
//! big-endian u32 key length, the key, a u32 value length, the value; then the end mark
//! `u32::MAX` and the pair count as a u64 (so a truncated copy is refused on restore).

use std::{
    io::{Read, Write},
    path::Path,
    sync::Arc,
};

use super::{RawBatch, SledEngine, Storage};
use crate::{Error, Result};

const MAGIC: &[u8] = b"MYELIN-SNAPSHOT 1\n";
const END: u32 = u32::MAX;
/// Pairs per batch when restoring.
const RESTORE_BATCH: usize = 10_000;

fn length(n: usize) -> Result<[u8; 4]> {
    u32::try_from(n)
        .ok()
        .filter(|n| *n != END)
        .map(u32::to_be_bytes)
        .ok_or_else(|| Error::Storage(format!("a record of {n} bytes is too large")))
}

impl Storage {
    /// Writes a consistent snapshot of the whole database to `out` (writers wait while the
    /// pairs are read); returns the number of pairs.
    pub fn write_snapshot(&self, out: &mut dyn Write) -> Result<u64> {
        out.write_all(MAGIC)?;
        let mut count = 0u64;
        self.engine.snapshot(&mut |k, v| {
            out.write_all(&length(k.len())?)?;
            out.write_all(k)?;
            out.write_all(&length(v.len())?)?;
            out.write_all(v)?;
            count += 1;
            Ok(())
        })?;
        out.write_all(&END.to_be_bytes())?;
        out.write_all(&count.to_be_bytes())?;
        out.flush()?;
        Ok(count)
    }

    /// Creates the database of `data_dir` (which must not have one) from a snapshot read
    /// from `input`, flushed to disk; returns the number of pairs.
    pub fn restore_snapshot(data_dir: &Path, input: &mut dyn Read) -> Result<u64> {
        let db = data_dir.join("db");
        if db.exists() {
            return Err(Error::Storage(format!(
                "{} already holds a database",
                data_dir.display()
            )));
        }
        let mut magic = vec![0; MAGIC.len()];
        input.read_exact(&mut magic)?;
        if magic != MAGIC {
            return Err(Error::Storage("not a Myelin database snapshot".into()));
        }
        std::fs::create_dir_all(data_dir)?;
        let engine = SledEngine::open(&db, 8 << 20)?;
        let mut batch = RawBatch::default();
        let mut count = 0u64;
        let truncated = |e: std::io::Error| Error::Storage(format!("snapshot truncated: {e}"));
        loop {
            let mut len = [0; 4];
            input.read_exact(&mut len).map_err(truncated)?;
            let key_len = u32::from_be_bytes(len);
            if key_len == END {
                let mut total = [0; 8];
                input.read_exact(&mut total).map_err(truncated)?;
                let total = u64::from_be_bytes(total);
                if total != count {
                    return Err(Error::Storage(format!(
                        "snapshot holds {count} pairs, its trailer says {total}"
                    )));
                }
                break;
            }
            let mut key = vec![0; key_len as usize];
            input.read_exact(&mut key).map_err(truncated)?;
            input.read_exact(&mut len).map_err(truncated)?;
            let mut value = vec![0; u32::from_be_bytes(len) as usize];
            input.read_exact(&mut value).map_err(truncated)?;
            batch.ops.push((key, Some(value)));
            count += 1;
            if batch.len() >= RESTORE_BATCH {
                super::Engine::apply(&engine, std::mem::take(&mut batch))?;
            }
        }
        super::Engine::apply(&engine, batch)?;
        super::Engine::flush(&engine)?;
        // The format check of an ordinary open.
        Storage::with_engine(Arc::new(engine))?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Batch;

    #[tokio::test]
    async fn a_snapshot_restores_every_pair_and_refuses_truncation() {
        let source = Storage::in_memory();
        let mut b = Batch::new();
        for i in 0..25u64 {
            b.insert(&source.trees.stream, &i.to_be_bytes(), b"!r:x");
        }
        source.commit(b).unwrap();
        let mut dump = Vec::new();
        let pairs = source.write_snapshot(&mut dump).unwrap();
        assert_eq!(pairs, 26, "25 pairs and the format version");

        let dir = tempfile::tempdir().unwrap();
        let restored = Storage::restore_snapshot(dir.path(), &mut dump.as_slice()).unwrap();
        assert_eq!(restored, 26);
        let opened = Storage::open_sled(dir.path(), 8 << 20).unwrap();
        assert_eq!(opened.trees.stream.scan_prefix(&[]).count(), 25);
        assert!(
            Storage::restore_snapshot(dir.path(), &mut dump.as_slice()).is_err(),
            "an existing database is never overwritten"
        );

        let other = tempfile::tempdir().unwrap();
        let cut = &dump[..dump.len() - 20];
        assert!(Storage::restore_snapshot(other.path(), &mut &cut[..]).is_err());
    }
}
