//! Storage: the only code that knows the database engine. Logical [`Tree`]s over one
//! [`Engine`] (sled on disk, a map in memory for tests), atomic [`Batch`]es across trees,
//! and group commit so many concurrent writers share one fsync (of the sled engine's
//! write-ahead log, [`wal`]).

mod commit;
mod engine;
pub mod keys;
pub mod lease;
mod memory;
pub mod migrate;
pub(crate) mod postgres_engine;
mod postgres_feed;
pub mod remote;
mod sled_engine;
mod snapshot;
mod stream_pos;
mod trees;
mod wal;

use std::{ops::Bound, path::Path, sync::Arc};

use serde::{de::DeserializeOwned, Serialize};

pub use self::{
    engine::{Engine, KeyValue, RawBatch},
    memory::MemoryEngine,
    remote::{Changed, RemoteChange, RemoteChanges},
    sled_engine::SledEngine,
    stream_pos::StreamPosition,
    trees::Trees,
};
use crate::Result;

/// A new database on the test PostgreSQL server (see [`postgres_engine::test_database`]).
#[cfg(test)]
pub(crate) use postgres_engine::test_database;

/// Version of the on-disk layout, recorded in the data dir.
pub const FORMAT_VERSION: u64 = 1;

/// A logical tree: every key is stored behind the tree's prefix byte.
#[derive(Clone)]
pub struct Tree {
    engine: Arc<dyn Engine>,
    prefix: u8,
}

impl Tree {
    fn new(engine: Arc<dyn Engine>, prefix: u8) -> Tree {
        Tree { engine, prefix }
    }

    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 1);
        k.push(self.prefix);
        k.extend_from_slice(key);
        k
    }

    /// Reads one value.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.engine.get(&self.full_key(key))
    }

    /// A handle that reads the tree without keeping the database open (for handlers of
    /// other processes' changes, which live as long as the engine that calls them).
    pub fn downgrade(&self) -> WeakTree {
        WeakTree {
            engine: Arc::downgrade(&self.engine),
            prefix: self.prefix,
        }
    }

    /// Reads and decodes one JSON value.
    pub fn get_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.get(key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether `key` exists.
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Writes one value at once (atomic, not yet durable).
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut b = Batch::new();
        b.insert(self, key, value);
        self.engine.apply(b.raw)
    }

    /// Removes one key at once.
    pub fn remove(&self, key: &[u8]) -> Result<()> {
        let mut b = Batch::new();
        b.remove(self, key);
        self.engine.apply(b.raw)
    }

    /// Atomically sets `key` to `new` if its value is `old`.
    pub fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool> {
        self.engine.compare_and_swap(&self.full_key(key), old, new)
    }

    /// All pairs whose key starts with `prefix`, keys returned without the tree prefix.
    pub fn scan_prefix<'a>(&'a self, prefix: &[u8]) -> impl Iterator<Item = Result<KeyValue>> + 'a {
        self.scan_prefix_dir(prefix, false)
    }

    /// Like [`Tree::scan_prefix`], newest (largest key) first when `reverse`.
    pub fn scan_prefix_dir<'a>(
        &'a self,
        prefix: &[u8],
        reverse: bool,
    ) -> impl Iterator<Item = Result<KeyValue>> + 'a {
        let start = self.full_key(prefix);
        let end = prefix_successor(&start);
        self.strip(self.engine.range(Bound::Included(start), end, reverse))
    }

    /// Pairs with `from <= key < to` (keys relative to the tree), in order or reversed.
    pub fn range<'a>(
        &'a self,
        from: &[u8],
        to: &[u8],
        reverse: bool,
    ) -> impl Iterator<Item = Result<KeyValue>> + 'a {
        let start = Bound::Included(self.full_key(from));
        let end = Bound::Excluded(self.full_key(to));
        self.strip(self.engine.range(start, end, reverse))
    }

    fn strip<'a>(
        &'a self,
        iter: engine::KvIter<'a>,
    ) -> impl Iterator<Item = Result<KeyValue>> + 'a {
        iter.map(|r| {
            r.map(|(mut k, v)| {
                k.remove(0);
                (k, v)
            })
        })
    }

    /// The last (largest) key of the tree, if any.
    pub fn last(&self) -> Result<Option<KeyValue>> {
        self.scan_prefix_dir(&[], true).next().transpose()
    }
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_successor(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

/// A tree that does not keep its database open (see [`Tree::downgrade`]).
#[derive(Clone)]
pub struct WeakTree {
    engine: std::sync::Weak<dyn Engine>,
    prefix: u8,
}

impl WeakTree {
    /// Reads one value; `None` once the database is closed.
    pub fn get(&self, key: &[u8]) -> Option<Result<Option<Vec<u8>>>> {
        let engine = self.engine.upgrade()?;
        let mut k = Vec::with_capacity(key.len() + 1);
        k.push(self.prefix);
        k.extend_from_slice(key);
        Some(engine.get(&k))
    }
}

/// Writes to one or more trees, applied atomically by [`Storage::commit`].
#[derive(Default)]
pub struct Batch {
    raw: RawBatch,
    /// Values dropped once the batch is applied (or given up): guards of in-memory state
    /// that must stay in place until the writes are visible (see [`Batch::hold`]).
    held: Vec<Box<dyn Send + Sync>>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds an insert.
    pub fn insert(&mut self, tree: &Tree, key: &[u8], value: &[u8]) {
        self.raw
            .ops
            .push((tree.full_key(key), Some(value.to_vec())));
    }

    /// Adds an insert of a JSON-encoded value.
    pub fn insert_json<T: Serialize + ?Sized>(
        &mut self,
        tree: &Tree,
        key: &[u8],
        value: &T,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value)?;
        self.raw.ops.push((tree.full_key(key), Some(bytes)));
        Ok(())
    }

    /// Adds a removal.
    pub fn remove(&mut self, tree: &Tree, key: &[u8]) {
        self.raw.ops.push((tree.full_key(key), None));
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Keeps `value` until the batch has been applied by [`Storage::commit`] (or dropped
    /// without it): an in-memory change tied to these writes ends when they are visible.
    pub fn hold(&mut self, value: impl Send + Sync + 'static) {
        self.held.push(Box::new(value));
    }
}

/// The database: trees plus group-committed durability.
pub struct Storage {
    engine: Arc<dyn Engine>,
    /// Every logical tree.
    pub trees: Trees,
    committer: commit::GroupCommit,
    /// What other processes sharing the database change (see [`remote`]).
    remote: Arc<RemoteChanges>,
    /// Whether other processes may write to the database.
    shared: bool,
}

impl Storage {
    /// Opens the sled database under `data_dir/db`.
    pub fn open_sled(data_dir: &Path, cache_capacity_bytes: u64) -> Result<Storage> {
        std::fs::create_dir_all(data_dir)?;
        let engine = SledEngine::open(&data_dir.join("db"), cache_capacity_bytes)?;
        Storage::with_engine(Arc::new(engine))
    }

    /// Connects to the PostgreSQL database at `url` with `pool_size` connections
    /// (`storage.engine = "postgres"`).
    pub fn open_postgres(url: &str, pool_size: usize) -> Result<Storage> {
        let engine = postgres_engine::PostgresEngine::connect(url, pool_size)?;
        Storage::with_engine(Arc::new(engine))
    }

    /// Connects to the PostgreSQL database at `url`, shared with other processes that
    /// connect this way: their changes reach the handlers registered with
    /// [`Storage::on_remote_change`].
    pub fn open_postgres_shared(url: &str, pool_size: usize) -> Result<Storage> {
        let remote = Arc::new(RemoteChanges::default());
        let engine =
            postgres_engine::PostgresEngine::connect_shared(url, pool_size, remote.clone())?;
        Storage::build(Arc::new(engine), remote, true)
    }

    /// A storage on the in-memory engine (tests).
    pub fn in_memory() -> Storage {
        Storage::with_engine(Arc::new(MemoryEngine::new())).expect("in-memory storage opens")
    }

    /// Wraps an engine, checking or recording the format version.
    pub fn with_engine(engine: Arc<dyn Engine>) -> Result<Storage> {
        Storage::build(engine, Arc::default(), false)
    }

    fn build(engine: Arc<dyn Engine>, remote: Arc<RemoteChanges>, shared: bool) -> Result<Storage> {
        let trees = Trees::new(&engine);
        let committer = commit::GroupCommit::new(engine.clone());
        let storage = Storage {
            engine,
            trees,
            committer,
            remote,
            shared,
        };
        storage.check_format()?;
        Ok(storage)
    }

    fn check_format(&self) -> Result<()> {
        let key = b"format_version";
        match self.trees.meta.get(key)? {
            Some(v) => {
                let found = keys::leading_u64(&v).unwrap_or(0);
                if found != FORMAT_VERSION {
                    return Err(crate::Error::Storage(format!(
                        "data dir has storage format {found}, this build reads {FORMAT_VERSION}"
                    )));
                }
            }
            None => {
                self.trees.meta.insert(key, &FORMAT_VERSION.to_be_bytes())?;
                self.engine.flush()?;
            }
        }
        Ok(())
    }

    /// Whether other processes share the database (and may write to it at any time).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Calls `handler` whenever another process sharing the database changes `tree`:
    /// register before reading what the handler keeps up to date (see [`remote`]).
    /// Never called when the database is not shared.
    pub fn on_remote_change(
        &self,
        tree: &Tree,
        handler: impl Fn(Changed<'_>) + Send + Sync + 'static,
    ) {
        self.remote
            .on(remote::Phase::Caches, tree.prefix, Box::new(handler));
    }

    /// Like [`Storage::on_remote_change`], for a handler that moves a stream position or
    /// wakes readers: it runs after the cache handlers of the same notice.
    pub fn on_remote_position(
        &self,
        tree: &Tree,
        handler: impl Fn(Changed<'_>) + Send + Sync + 'static,
    ) {
        self.remote
            .on(remote::Phase::Positions, tree.prefix, Box::new(handler));
    }

    /// How many change notices from other processes have arrived.
    pub fn remote_notices(&self) -> u64 {
        self.remote.received()
    }

    /// Commits a batch numbered by the counter stored under `counter` in `tree`, drawn in
    /// the database so that processes sharing it number their batches in one sequence
    /// (see [`Engine::apply_counted`]); returns the number. Only for a shared database.
    pub fn commit_counted(
        &self,
        tree: &Tree,
        counter: &[u8],
        fill: impl FnOnce(u64, &mut Batch) -> Result<()>,
    ) -> Result<u64> {
        let mut fill = Some(fill);
        let mut held = Vec::new();
        let number = self
            .engine
            .apply_counted(&tree.full_key(counter), &mut |number| {
                let fill = fill
                    .take()
                    .ok_or_else(|| crate::Error::internal("a counted batch filled twice"))?;
                let mut batch = Batch::new();
                fill(number, &mut batch)?;
                let Batch { raw, held: h } = batch;
                held = h;
                Ok(raw)
            });
        drop(held);
        number
    }

    /// Waits for and takes the database lock named `name`, which other processes sharing
    /// the database contend for; released when the guard is dropped (or the process
    /// dies). Blocks. Only for a shared database.
    pub fn lock(&self, name: i64) -> Result<Box<dyn Send + Sync>> {
        self.engine.lock(name)
    }

    /// Applies a batch atomically; visible at once, durable after the next flush.
    pub fn commit(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let Batch { raw, held } = batch;
        let applied = self.engine.apply(raw);
        drop(held);
        applied
    }

    /// Waits until everything applied before this call is on disk. Concurrent callers
    /// share one flush.
    pub async fn durable(&self) -> Result<()> {
        self.committer.wait().await
    }

    /// Applies a batch and waits until it is durable.
    pub async fn commit_durable(&self, batch: Batch) -> Result<()> {
        self.commit(batch)?;
        self.durable().await
    }

    /// Checks that the database answers a read (health checks).
    pub fn check_readable(&self) -> Result<()> {
        self.trees
            .meta
            .get(b"format_version")?
            .map(|_| ())
            .ok_or_else(|| crate::Error::Storage("the format version record is missing".into()))
    }

    /// How many entries of each tree hold `needle` in their key or value (trees without
    /// any are left out). Reads the whole database: for tests and diagnostics.
    pub fn entries_mentioning(
        &self,
        needle: &[u8],
    ) -> Result<std::collections::BTreeMap<&'static str, usize>> {
        let contains =
            |bytes: &[u8]| !needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle);
        let mut out = std::collections::BTreeMap::new();
        for (name, tree) in self.trees.each() {
            let mut count = 0;
            for kv in tree.scan_prefix(&[]) {
                let (k, v) = kv?;
                if contains(&k) || contains(&v) {
                    count += 1;
                }
            }
            if count > 0 {
                out.insert(name, count);
            }
        }
        Ok(out)
    }

    /// Flushes synchronously (shutdown, CLI).
    pub fn flush(&self) -> Result<()> {
        self.engine.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engines() -> Vec<(&'static str, Storage, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let sled = Storage::open_sled(dir.path(), 8 << 20).unwrap();
        let postgres = Storage::open_postgres(&postgres_engine::test_database(), 2).unwrap();
        vec![
            ("memory", Storage::in_memory(), None),
            ("sled", sled, Some(dir)),
            ("postgres", postgres, None),
        ]
    }

    #[tokio::test]
    async fn trees_are_isolated_and_ordered_on_every_engine() {
        for (name, s, _dir) in engines() {
            let t = &s.trees;
            let mut b = Batch::new();
            for i in [3u64, 1, 2, 300] {
                b.insert(
                    &t.room_timeline,
                    &keys::KeyBuilder::new().str("!r:x").u64(i).build(),
                    b"e",
                );
            }
            b.insert(
                &t.room_timeline,
                &keys::KeyBuilder::new().str("!r2:x").u64(1).build(),
                b"other",
            );
            b.insert(&t.stream, &7u64.to_be_bytes(), b"!r:x");
            s.commit_durable(b).await.unwrap();

            let got: Vec<u64> = t
                .room_timeline
                .scan_prefix(&keys::strs(&["!r:x"]))
                .map(|r| keys::trailing_u64(&r.unwrap().0).unwrap())
                .collect();
            assert_eq!(got, vec![1, 2, 3, 300], "{name}");
            let rev: Vec<u64> = t
                .room_timeline
                .scan_prefix_dir(&keys::strs(&["!r:x"]), true)
                .map(|r| keys::trailing_u64(&r.unwrap().0).unwrap())
                .collect();
            assert_eq!(rev, vec![300, 3, 2, 1], "{name}");
            let from = keys::KeyBuilder::new().str("!r:x").u64(2).build();
            let to = keys::KeyBuilder::new().str("!r:x").u64(300).build();
            assert_eq!(
                t.room_timeline.range(&from, &to, false).count(),
                2,
                "{name}"
            );
            assert_eq!(
                t.stream.last().unwrap().unwrap().0,
                7u64.to_be_bytes().to_vec(),
                "{name}"
            );
            assert!(t.pdus.last().unwrap().is_none(), "{name}");
        }
    }

    #[tokio::test]
    async fn compare_and_swap_and_remove() {
        for (name, s, _dir) in engines() {
            let t = &s.trees.meta;
            assert!(
                t.compare_and_swap(b"k", None, Some(b"1".to_vec())).unwrap(),
                "{name}"
            );
            assert!(
                !t.compare_and_swap(b"k", None, Some(b"2".to_vec())).unwrap(),
                "{name}"
            );
            assert!(
                t.compare_and_swap(b"k", Some(b"1"), Some(b"2".to_vec()))
                    .unwrap(),
                "{name}"
            );
            assert_eq!(t.get(b"k").unwrap().unwrap(), b"2");
            t.remove(b"k").unwrap();
            assert!(!t.contains(b"k").unwrap(), "{name}");
        }
    }

    #[tokio::test]
    async fn sled_data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open_sled(dir.path(), 8 << 20).unwrap();
            let mut b = Batch::new();
            b.insert_json(&s.trees.rooms, b"!r:x", &serde_json::json!({"v": 1}))
                .unwrap();
            s.commit_durable(b).await.unwrap();
        }
        // The group-commit task lets go of the database (and sled of its file lock) on
        // its own schedule after the drop: reopen as soon as it has, within a bound.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let s = loop {
            match Storage::open_sled(dir.path(), 8 << 20) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("lock"), "{e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        let v: serde_json::Value = s.trees.rooms.get_json(b"!r:x").unwrap().unwrap();
        assert_eq!(v["v"], 1);
    }

    #[tokio::test]
    async fn concurrent_durable_writers_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Storage::open_sled(dir.path(), 8 << 20).unwrap());
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut b = Batch::new();
                b.insert(&s.trees.stream, &i.to_be_bytes(), b"r");
                s.commit_durable(b).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(s.trees.stream.scan_prefix(&[]).count(), 50);
    }
}
