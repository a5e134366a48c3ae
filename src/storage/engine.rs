//! The storage engine seam: an ordered key-value store with atomic batches. sled and an
//! in-memory map implement it; everything above `storage/` sees only [`Tree`]s.

use std::ops::Bound;

use crate::Result;

/// One key-value pair as stored.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// An iterator over stored pairs, in key order (or reversed).
pub type KvIter<'a> = Box<dyn Iterator<Item = Result<KeyValue>> + Send + 'a>;

/// A set of writes applied atomically: all or none are visible, even after a crash.
#[derive(Default, Debug)]
pub struct RawBatch {
    pub(crate) ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl RawBatch {
    /// Number of writes in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// An ordered key-value engine.
pub trait Engine: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Iterates over `[start, end)` (as bounds), ascending or descending.
    fn range<'a>(&'a self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool)
        -> KvIter<'a>;
    /// Applies a batch atomically.
    fn apply(&self, batch: RawBatch) -> Result<()>;
    /// Makes everything applied so far durable (fsync).
    fn flush(&self) -> Result<()>;
    /// Calls `visit` with every pair in key order while no batch is applied: a consistent
    /// point-in-time view (online backup). Writers wait until it returns.
    fn snapshot(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()>;
    /// Commits a batch numbered by a counter that other processes sharing the database
    /// draw from too: takes the counter stored at `counter` (a big-endian u64, 0 when
    /// absent) plus one, keeping other processes' draws waiting until this commit ends,
    /// lets `fill` write the batch for that number, and commits it with the counter moved
    /// — so numbers commit in order and without gaps across processes. A failing `fill`
    /// commits nothing. Only engines that can be shared implement it.
    fn apply_counted(
        &self,
        counter: &[u8],
        fill: &mut dyn FnMut(u64) -> Result<RawBatch>,
    ) -> Result<u64> {
        let _ = (counter, fill);
        Err(crate::Error::internal(
            "counted commits are for databases shared by several processes",
        ))
    }
    /// Waits for and takes the lock named `name` that processes sharing the database
    /// contend for (a room's appends); it is released when the returned guard is dropped,
    /// or when this process dies. Blocks. Only engines that can be shared implement it.
    fn lock(&self, name: i64) -> Result<Box<dyn Send + Sync>> {
        let _ = name;
        Err(crate::Error::internal(
            "database locks are for databases shared by several processes",
        ))
    }
    /// Atomically replaces `key`'s value if it is `old`; returns whether it did.
    fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool>;
}
