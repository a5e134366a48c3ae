//! `myelin migrate`: copies a stopped server's whole store from one engine to another
//! (sled ⇄ PostgreSQL), pair by pair in key order, in batches; the target must be empty.
//! Keys and media stay in the data dir, which both engines use.

use std::{ops::Bound, path::Path, sync::Arc};

use super::{
    engine::{Engine, RawBatch},
    postgres_engine::PostgresEngine,
    sled_engine::SledEngine,
};
use crate::{config::StorageEngine, Error, Result};

/// Pairs per target batch (one transaction on PostgreSQL).
const BATCH: usize = 1000;

/// Where a migration reads or writes.
pub struct Endpoint<'a> {
    pub engine: StorageEngine,
    /// The data dir (sled's database is `<data_dir>/db`).
    pub data_dir: &'a Path,
    /// The PostgreSQL connection string.
    pub postgres_url: &'a str,
}

fn open(end: &Endpoint<'_>, create: bool) -> Result<Arc<dyn Engine>> {
    Ok(match end.engine {
        StorageEngine::Sled => {
            let db = end.data_dir.join("db");
            if !create && !db.exists() {
                return Err(Error::Storage(format!(
                    "no sled database at {}",
                    db.display()
                )));
            }
            if create {
                std::fs::create_dir_all(end.data_dir)?;
            }
            // sled's file lock refuses a database a running server holds.
            Arc::new(SledEngine::open(&db, 64 << 20).map_err(|e| {
                Error::Storage(format!(
                    "opening {} (is the server still running?): {e}",
                    db.display()
                ))
            })?)
        }
        StorageEngine::Postgres => {
            if end.postgres_url.is_empty() {
                return Err(Error::Storage(
                    "storage.postgres_url (MYELIN_STORAGE_POSTGRES_URL) is not set".into(),
                ));
            }
            // The advisory lock refuses a database a running server holds.
            Arc::new(PostgresEngine::connect(end.postgres_url, 2)?)
        }
    })
}

/// Copies every pair from `from` into the empty `to`; returns how many.
pub fn migrate(from: &Endpoint<'_>, to: &Endpoint<'_>) -> Result<u64> {
    if from.engine == to.engine {
        return Err(Error::Storage(
            "the source and target engines are the same".into(),
        ));
    }
    let source = open(from, false)?;
    let target = open(to, true)?;
    copy_all(source.as_ref(), target.as_ref())
}

/// Copies `source` into `target`, which must be empty, and checks the count.
fn copy_all(source: &dyn Engine, target: &dyn Engine) -> Result<u64> {
    if target
        .range(Bound::Unbounded, Bound::Unbounded, false)
        .next()
        .transpose()?
        .is_some()
    {
        return Err(Error::Storage(
            "the target database is not empty: migrate into a new one".into(),
        ));
    }
    let mut batch = RawBatch::default();
    let mut copied = 0u64;
    source.snapshot(&mut |k, v| {
        batch.ops.push((k.to_vec(), Some(v.to_vec())));
        if batch.ops.len() >= BATCH {
            target.apply(std::mem::take(&mut batch))?;
        }
        copied += 1;
        Ok(())
    })?;
    if !batch.is_empty() {
        target.apply(batch)?;
    }
    target.flush()?;
    let landed = target
        .range(Bound::Unbounded, Bound::Unbounded, false)
        .try_fold(0u64, |n, kv| kv.map(|_| n + 1))?;
    if landed != copied {
        return Err(Error::Storage(format!(
            "copied {copied} records but the target holds {landed}"
        )));
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryEngine;

    #[test]
    fn copies_everything_once_into_an_empty_target_only() {
        let source = MemoryEngine::new();
        let mut batch = RawBatch::default();
        for i in 0..2_345u32 {
            batch
                .ops
                .push((i.to_be_bytes().to_vec(), Some(vec![i as u8; 3])));
        }
        source.apply(batch).unwrap();
        let target = MemoryEngine::new();
        assert_eq!(copy_all(&source, &target).unwrap(), 2_345);
        assert_eq!(target.get(&7u32.to_be_bytes()).unwrap(), Some(vec![7; 3]));
        let again = copy_all(&source, &target).unwrap_err();
        assert!(again.to_string().contains("not empty"), "{again}");
    }

    #[test]
    fn sled_to_postgres_and_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let sled = SledEngine::open(&dir.path().join("db"), 8 << 20).unwrap();
            let mut batch = RawBatch::default();
            for i in 0..1_500u32 {
                batch
                    .ops
                    .push((i.to_be_bytes().to_vec(), Some(b"v".to_vec())));
            }
            sled.apply(batch).unwrap();
            sled.flush().unwrap();
        }
        let url = super::super::postgres_engine::test_database();
        let sled_end = Endpoint {
            engine: StorageEngine::Sled,
            data_dir: dir.path(),
            postgres_url: "",
        };
        let pg_end = Endpoint {
            engine: StorageEngine::Postgres,
            data_dir: dir.path(),
            postgres_url: &url,
        };
        assert_eq!(migrate(&sled_end, &pg_end).unwrap(), 1_500);
        let back = tempfile::tempdir().unwrap();
        let back_end = Endpoint {
            engine: StorageEngine::Sled,
            data_dir: back.path(),
            postgres_url: "",
        };
        assert_eq!(migrate(&pg_end, &back_end).unwrap(), 1_500);
        let same = Endpoint {
            engine: StorageEngine::Sled,
            data_dir: back.path(),
            postgres_url: "",
        };
        assert!(migrate(&same, &back_end).is_err());
    }
}
