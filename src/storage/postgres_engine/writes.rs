//! A batch's writes as the PostgreSQL engine's statements take them.

use std::collections::BTreeMap;

use postgres::Statement;

use super::{pg, Conn, DELETE, NOTIFY, UPSERT};
use crate::{
    storage::{engine::RawBatch, postgres_feed},
    Result,
};

/// A batch's writes as statements take them: the last write of each key (as applied in
/// order), split into upserts and removals.
pub(super) struct Writes {
    put_keys: Vec<Vec<u8>>,
    put_values: Vec<Vec<u8>>,
    removed: Vec<Vec<u8>>,
}

/// The statements that write a batch, prepared on one connection.
pub(super) struct WriteStatements {
    upsert: Statement,
    delete: Statement,
    notify: Option<Statement>,
}

impl WriteStatements {
    pub(super) fn prepare(conn: &mut Conn, notify: bool) -> Result<WriteStatements> {
        Ok(WriteStatements {
            upsert: conn.statement(UPSERT)?,
            delete: conn.statement(DELETE)?,
            notify: if notify {
                Some(conn.statement(NOTIFY)?)
            } else {
                None
            },
        })
    }
}

impl Writes {
    pub(super) fn of(batch: RawBatch) -> Writes {
        let mut last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for (k, v) in batch.ops {
            last.insert(k, v);
        }
        let mut writes = Writes {
            put_keys: Vec::new(),
            put_values: Vec::new(),
            removed: Vec::new(),
        };
        for (k, v) in last {
            match v {
                Some(v) => {
                    writes.put_keys.push(k);
                    writes.put_values.push(v);
                }
                None => writes.removed.push(k),
            }
        }
        writes
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &Vec<u8>> + Clone {
        self.put_keys.iter().chain(&self.removed)
    }

    /// Writes everything inside `tx`, with the change notice when there is one.
    pub(super) fn write(
        &self,
        tx: &mut postgres::Transaction<'_>,
        statements: &WriteStatements,
        notice: Option<&str>,
    ) -> Result<()> {
        if !self.put_keys.is_empty() {
            tx.execute(&statements.upsert, &[&self.put_keys, &self.put_values])
                .map_err(pg)?;
        }
        if !self.removed.is_empty() {
            tx.execute(&statements.delete, &[&self.removed])
                .map_err(pg)?;
        }
        if let (Some(notify), Some(notice)) = (&statements.notify, notice) {
            tx.execute(notify, &[&postgres_feed::CHANNEL, &notice])
                .map_err(pg)?;
        }
        Ok(())
    }
}
