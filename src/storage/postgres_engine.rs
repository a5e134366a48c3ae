//! The PostgreSQL implementation of [`Engine`] (`storage.engine = "postgres"`).
//!
//! Schema: one table, `myelin_kv (k BYTEA PRIMARY KEY, v BYTEA NOT NULL)`. Every logical
//! tree already lives under its own key prefix (see `trees.rs`), so a tree's ordered
//! range scan is a range scan of the primary-key index (`bytea` compares bytewise,
//! unsigned, a prefix first: sled's order), and a batch over several trees is one
//! transaction. A batch returns once PostgreSQL has committed it: "durable" is the commit
//! (`synchronous_commit` on), so [`Engine::flush`] has nothing left to do; concurrent
//! commits share WAL flushes inside PostgreSQL.
//!
//! The SQL is the subset CockroachDB and YugabyteDB also accept: `BYTEA` keys and
//! values, `INSERT … SELECT * FROM unnest($1::BYTEA[], $2::BYTEA[]) ON CONFLICT (k) DO
//! UPDATE`, `DELETE … WHERE k = ANY($1)`, keyset pagination with `ORDER BY k LIMIT n`,
//! and `REPEATABLE READ` read-only transactions for snapshots.
//!
//! The engine trait is synchronous and is called from async tasks, where the blocking
//! `postgres` client must not run (it drives its own runtime). So each pooled connection
//! lives on a thread of its own; a call hands its work to a free connection's thread and
//! waits for the answer, as a sled call waits for its disk.

use std::{
    collections::{HashMap, VecDeque},
    ops::Bound,
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use postgres::{types::ToSql, Client, NoTls, Statement};

use self::writes::{WriteStatements, Writes};
use super::{
    engine::{Engine, KeyValue, KvIter, RawBatch},
    postgres_feed::{self, Listener},
    remote::RemoteChanges,
};
use crate::{Error, Result};

/// The first page of a range scan: most scans stop after a few pairs.
const FIRST_PAGE: i64 = 32;
/// The largest page of a range scan.
const MAX_PAGE: i64 = 1024;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS myelin_kv (k BYTEA PRIMARY KEY, v BYTEA NOT NULL)";
const GET: &str = "SELECT v FROM myelin_kv WHERE k = $1";
const UPSERT: &str = "INSERT INTO myelin_kv (k, v) SELECT * FROM unnest($1::BYTEA[], $2::BYTEA[]) \
                      ON CONFLICT (k) DO UPDATE SET v = excluded.v";
const DELETE: &str = "DELETE FROM myelin_kv WHERE k = ANY($1::BYTEA[])";
const INSERT_IF_ABSENT: &str =
    "INSERT INTO myelin_kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING";
const UPDATE_IF: &str = "UPDATE myelin_kv SET v = $3 WHERE k = $1 AND v = $2";
const DELETE_IF: &str = "DELETE FROM myelin_kv WHERE k = $1 AND v = $2";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";
/// A counter's row, created at zero if missing so that it can be locked.
const COUNTER_ROW: &str = "INSERT INTO myelin_kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING";
const COUNTER_LOCK: &str = "SELECT v FROM myelin_kv WHERE k = $1 FOR UPDATE";

/// One pooled connection with its prepared statements.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).map_err(pg)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// PostgreSQL-backed engine.
pub struct PostgresEngine {
    jobs: Mutex<mpsc::Sender<Job>>,
    /// The thread holding the session with the advisory lock that keeps a second process
    /// off the database (one process per database until several are supported), and the
    /// sender whose drop tells it to release the lock and end the session.
    owner: Mutex<Option<(mpsc::Sender<()>, thread::JoinHandle<()>)>>,
    /// Set when other processes share the database: this process's id in the notices
    /// its batches send, and the session listening to theirs (see [`postgres_feed`]).
    shared: Option<Shared>,
    /// The connection string, for connections opened later.
    url: String,
    /// One connection per counter for counted commits (see [`Engine::apply_counted`]):
    /// a draw holds its connection while the caller fills the batch, so draws never wait
    /// for (or starve) the pool that reads go through.
    counters: Mutex<HashMap<Vec<u8>, mpsc::Sender<Job>>>,
    /// Idle connections for [`Engine::lock`]: a held lock keeps its session (and so its
    /// connection) until released.
    lockers: Arc<Mutex<Vec<mpsc::Sender<Job>>>>,
}

/// A held database lock: unlocks on its session when dropped, which then serves the next
/// lock.
struct HeldLock {
    name: i64,
    session: Option<mpsc::Sender<Job>>,
    idle: Arc<Mutex<Vec<mpsc::Sender<Job>>>>,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let name = self.name;
        let unlock: Job = Box::new(move |conn| {
            if let Err(e) = conn
                .client
                .execute("SELECT pg_advisory_unlock($1)", &[&name])
            {
                tracing::error!(error = %e, "releasing a database lock");
            }
        });
        // The session runs its jobs in order: whoever takes it next waits behind the unlock.
        if session.send(unlock).is_ok() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(session);
        }
    }
}

/// The change feed of an engine that shares its database.
struct Shared {
    process: u64,
    _listener: Listener,
}

impl Drop for PostgresEngine {
    /// Releases the database lock before returning, so that the next process (or the
    /// next engine of this one: `myelin migrate` opens the target again) finds it free.
    fn drop(&mut self) {
        let owner = self
            .owner
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((release, thread)) = owner {
            drop(release);
            let _ = thread.join();
        }
    }
}

/// The advisory lock key of a Myelin process using the database ("myelin" in ASCII).
const PROCESS_LOCK: i64 = 0x6d79_656c_696e;

/// How long a starting process waits for the database lock before refusing to start.
const LOCK_WAIT: Duration = Duration::from_secs(5);

fn pg(e: postgres::Error) -> Error {
    Error::Storage(format!("postgres: {e}"))
}

fn connect(url: &str) -> Result<Conn> {
    let client = Client::connect(url, NoTls).map_err(pg)?;
    Ok(Conn {
        client,
        statements: HashMap::new(),
    })
}

impl PostgresEngine {
    /// Connects `pool_size` connections to `url` (a libpq URL or key=value string) and
    /// creates the table when it is missing. This process is then the database's only
    /// one: another one (sharing or not) is refused while it runs.
    pub fn connect(url: &str, pool_size: usize) -> Result<PostgresEngine> {
        PostgresEngine::open(url, pool_size, None)
    }

    /// Connects like [`PostgresEngine::connect`], sharing the database with other
    /// processes that connect this way (never with one that connected alone): each batch
    /// committed here is announced to them, and theirs reach `changes`.
    pub fn connect_shared(
        url: &str,
        pool_size: usize,
        changes: Arc<RemoteChanges>,
    ) -> Result<PostgresEngine> {
        PostgresEngine::open(url, pool_size, Some(changes))
    }

    fn open(
        url: &str,
        pool_size: usize,
        changes: Option<Arc<RemoteChanges>>,
    ) -> Result<PostgresEngine> {
        // A sharing process takes the lock shared: it coexists with other sharing
        // processes and keeps out a process that runs alone, and the other way round.
        let (lock, unlock, refusal) = if changes.is_some() {
            (
                "SELECT pg_try_advisory_lock_shared($1)",
                "SELECT pg_advisory_unlock_shared($1)",
                "a Myelin process that does not share its database is using this PostgreSQL \
                 database",
            )
        } else {
            (
                "SELECT pg_try_advisory_lock($1)",
                "SELECT pg_advisory_unlock($1)",
                "another Myelin process is using this PostgreSQL database (one process per \
                 database)",
            )
        };
        let owner = {
            let url = url.to_owned();
            let (locked_tx, locked_rx) = mpsc::channel::<Result<()>>();
            let (release_tx, release_rx) = mpsc::channel::<()>();
            let holder = thread::Builder::new()
                .name("myelin-pg-owner".into())
                .spawn(move || {
                    let locked = Client::connect(&url, NoTls)
                        .map_err(pg)
                        .and_then(|mut client| {
                            // A process killed a moment ago still holds the lock until its
                            // backend has noticed the closed connection: ask again for a
                            // few seconds before refusing.
                            let deadline = Instant::now() + LOCK_WAIT;
                            loop {
                                let row = client.query_one(lock, &[&PROCESS_LOCK]).map_err(pg)?;
                                if row.get::<_, bool>(0) {
                                    return Ok(client);
                                }
                                if Instant::now() >= deadline {
                                    return Err(Error::Storage(refusal.into()));
                                }
                                thread::sleep(Duration::from_millis(100));
                            }
                        });
                    match locked {
                        Ok(mut client) => {
                            let _ = locked_tx.send(Ok(()));
                            // Hold the session (and its lock) until the engine is dropped,
                            // then release the lock explicitly: the server frees a closed
                            // session's locks only once it has noticed the close.
                            let _ = release_rx.recv();
                            let _ = client.execute(unlock, &[&PROCESS_LOCK]);
                            drop(client);
                        }
                        Err(e) => {
                            let _ = locked_tx.send(Err(e));
                        }
                    }
                })
                .map_err(|e| Error::Storage(format!("starting a database thread: {e}")))?;
            locked_rx
                .recv()
                .map_err(|_| Error::Storage("the database lock thread failed".into()))??;
            (release_tx, holder)
        };
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        for n in 0..pool_size.max(1) {
            let receiver = receiver.clone();
            let ready = ready_tx.clone();
            let url = url.to_owned();
            thread::Builder::new()
                .name(format!("myelin-pg-{n}"))
                .spawn(move || worker(&url, receiver, ready))
                .map_err(|e| Error::Storage(format!("starting a database thread: {e}")))?;
        }
        drop(ready_tx);
        for _ in 0..pool_size.max(1) {
            ready_rx
                .recv()
                .map_err(|_| Error::Storage("a database thread ended while connecting".into()))??;
        }
        let shared = match changes {
            Some(changes) => {
                let process = rand::random::<u64>();
                Some(Shared {
                    process,
                    _listener: Listener::start(url, process, changes)?,
                })
            }
            None => None,
        };
        let engine = PostgresEngine {
            jobs: Mutex::new(sender),
            owner: Mutex::new(Some(owner)),
            shared,
            url: url.to_owned(),
            counters: Mutex::default(),
            lockers: Arc::default(),
        };
        engine.run(|conn| conn.client.batch_execute(SCHEMA).map_err(pg))?;
        Ok(engine)
    }

    /// The change notice for a batch writing `keys`, when other processes share the
    /// database.
    fn notice<'a>(&self, keys: impl Iterator<Item = &'a Vec<u8>> + Clone) -> Option<String> {
        let shared = self.shared.as_ref()?;
        Some(postgres_feed::notice(
            shared.process,
            keys.map(Vec::as_slice),
        ))
    }

    /// A connection's thread of its own (counters, locks).
    fn dedicated(&self, name: &str) -> Result<mpsc::Sender<Job>> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let url = self.url.clone();
        let receiver = Arc::new(Mutex::new(receiver));
        thread::Builder::new()
            .name(name.into())
            .spawn(move || worker(&url, receiver, ready_tx))
            .map_err(|e| Error::Storage(format!("starting a database thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| Error::Storage("a database thread ended while connecting".into()))??;
        Ok(sender)
    }

    /// Hands `work` to the connection kept for `counter`, opening it on first use.
    fn submit_counted<T: Send + 'static>(
        &self,
        counter: &[u8],
        work: impl FnOnce(&mut Conn) -> Result<T> + Send + 'static,
    ) -> Result<mpsc::Receiver<Result<T>>> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(work(conn));
        });
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let sender = match counters.get(counter) {
            Some(sender) => sender.clone(),
            None => {
                let sender = self.dedicated("myelin-pg-counter")?;
                counters.insert(counter.to_vec(), sender.clone());
                sender
            }
        };
        drop(counters);
        sender
            .send(job)
            .map_err(|_| Error::Storage("the database threads are gone".into()))?;
        Ok(answer)
    }

    /// Runs `work` on a pooled connection's thread and waits for its answer.
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Conn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        wait(self.submit(work)?)
    }

    /// Hands `work` to a pooled connection's thread; its answer arrives on the receiver.
    fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Conn) -> Result<T> + Send + 'static,
    ) -> Result<mpsc::Receiver<Result<T>>> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(work(conn));
        });
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| Error::Storage("the database threads are gone".into()))?;
        Ok(answer)
    }

    /// One page of a range scan.
    fn page(
        &self,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        reverse: bool,
        limit: i64,
    ) -> Result<Vec<KeyValue>> {
        self.run(move |conn| {
            let mut conditions = Vec::new();
            let mut params: Vec<Vec<u8>> = Vec::new();
            for (bound, inclusive, exclusive) in [(&start, ">=", ">"), (&end, "<=", "<")] {
                match bound {
                    Bound::Included(key) => {
                        params.push(key.clone());
                        conditions.push(format!("k {inclusive} ${}", params.len()));
                    }
                    Bound::Excluded(key) => {
                        params.push(key.clone());
                        conditions.push(format!("k {exclusive} ${}", params.len()));
                    }
                    Bound::Unbounded => {}
                }
            }
            let filter = if conditions.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", conditions.join(" AND "))
            };
            let sql = format!(
                "SELECT k, v FROM myelin_kv {filter} ORDER BY k {} LIMIT ${}",
                if reverse { "DESC" } else { "ASC" },
                params.len() + 1
            );
            let statement = conn.statement(&sql)?;
            let mut args: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            args.push(&limit);
            let rows = conn.client.query(&statement, &args).map_err(pg)?;
            Ok(rows
                .into_iter()
                .map(|row| (row.get::<_, Vec<u8>>(0), row.get::<_, Vec<u8>>(1)))
                .collect())
        })
    }
}

/// The answer of a submitted job.
fn wait<T>(answer: mpsc::Receiver<Result<T>>) -> Result<T> {
    answer
        .recv()
        .map_err(|_| Error::Storage("a database thread failed during a call".into()))?
}

/// A connection's thread: connects, reports, then runs jobs until the engine is dropped.
/// A connection that breaks is replaced before the next job.
fn worker(url: &str, jobs: Arc<Mutex<mpsc::Receiver<Job>>>, ready: mpsc::Sender<Result<()>>) {
    let mut conn = match connect(url) {
        Ok(conn) => {
            let _ = ready.send(Ok(()));
            conn
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    drop(ready);
    loop {
        let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        if conn.client.is_closed() {
            match connect(url) {
                Ok(fresh) => conn = fresh,
                Err(e) => tracing::error!(error = %e, "reconnecting to PostgreSQL"),
            }
        }
        job(&mut conn);
    }
}

/// A range scan fetched page by page (keyset pagination): nothing is held between pages.
struct Pages<'a> {
    engine: &'a PostgresEngine,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    reverse: bool,
    buffer: VecDeque<KeyValue>,
    next_page: i64,
    finished: bool,
}

impl Iterator for Pages<'_> {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.is_empty() && !self.finished {
            let limit = self.next_page;
            self.next_page = (limit * 4).min(MAX_PAGE);
            match self
                .engine
                .page(self.start.clone(), self.end.clone(), self.reverse, limit)
            {
                Ok(rows) => {
                    self.finished = (rows.len() as i64) < limit;
                    if let Some((last, _)) = rows.last() {
                        let after = Bound::Excluded(last.clone());
                        if self.reverse {
                            self.end = after;
                        } else {
                            self.start = after;
                        }
                    }
                    self.buffer.extend(rows);
                }
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
        self.buffer.pop_front().map(Ok)
    }
}

impl Engine for PostgresEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = key.to_vec();
        self.run(move |conn| {
            let statement = conn.statement(GET)?;
            let row = conn.client.query_opt(&statement, &[&key]).map_err(pg)?;
            Ok(row.map(|row| row.get::<_, Vec<u8>>(0)))
        })
    }

    fn range<'a>(
        &'a self,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        reverse: bool,
    ) -> KvIter<'a> {
        Box::new(Pages {
            engine: self,
            start,
            end,
            reverse,
            buffer: VecDeque::new(),
            next_page: FIRST_PAGE,
            finished: false,
        })
    }

    fn apply(&self, batch: RawBatch) -> Result<()> {
        let writes = Writes::of(batch);
        let notice = self.notice(writes.keys());
        self.run(move |conn| {
            let statements = WriteStatements::prepare(conn, notice.is_some())?;
            let mut tx = conn.client.transaction().map_err(pg)?;
            writes.write(&mut tx, &statements, notice.as_deref())?;
            tx.commit().map_err(pg)
        })
    }

    fn lock(&self, name: i64) -> Result<Box<dyn Send + Sync>> {
        let idle = self.lockers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let session = match idle {
            Some(session) => session,
            None => self.dedicated("myelin-pg-lock")?,
        };
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn| {
            let locked = conn
                .client
                .execute("SELECT pg_advisory_lock($1)", &[&name])
                .map(|_| ())
                .map_err(pg);
            let _ = reply.send(locked);
        });
        session
            .send(job)
            .map_err(|_| Error::Storage("the database threads are gone".into()))?;
        // A session whose lock failed is dropped with its connection: it may be broken.
        wait(answer)?;
        Ok(Box::new(HeldLock {
            name,
            session: Some(session),
            idle: self.lockers.clone(),
        }))
    }

    fn apply_counted(
        &self,
        counter: &[u8],
        fill: &mut dyn FnMut(u64) -> Result<RawBatch>,
    ) -> Result<u64> {
        let (number_tx, number_rx) = mpsc::sync_channel::<u64>(1);
        let (batch_tx, batch_rx) = mpsc::sync_channel::<Option<(Writes, Option<String>)>>(1);
        let key = counter.to_vec();
        let answer = self.submit_counted(counter, move |conn| {
            let row = conn.statement(COUNTER_ROW)?;
            let lock = conn.statement(COUNTER_LOCK)?;
            let statements = WriteStatements::prepare(conn, true)?;
            let mut tx = conn.client.transaction().map_err(pg)?;
            tx.execute(&row, &[&key, &0u64.to_be_bytes().to_vec()])
                .map_err(pg)?;
            let current = tx
                .query_one(&lock, &[&key])
                .map_err(pg)?
                .get::<_, Vec<u8>>(0);
            let current = super::keys::leading_u64(&current).unwrap_or(0);
            number_tx
                .send(current + 1)
                .map_err(|_| Error::internal("a counted commit's caller is gone"))?;
            // Nothing (or a hang-up): the caller gave up; dropping `tx` rolls back.
            let Ok(Some((writes, notice))) = batch_rx.recv() else {
                return Err(Error::internal("a counted commit was given up"));
            };
            writes.write(&mut tx, &statements, notice.as_deref())?;
            tx.commit().map_err(pg)
        })?;
        let Ok(number) = number_rx.recv() else {
            return Err(wait(answer)
                .err()
                .unwrap_or_else(|| Error::internal("a counted commit ended early")));
        };
        match fill(number) {
            Ok(mut batch) => {
                batch
                    .ops
                    .push((counter.to_vec(), Some(number.to_be_bytes().to_vec())));
                let writes = Writes::of(batch);
                let notice = self.notice(writes.keys());
                let _ = batch_tx.send(Some((writes, notice)));
                wait(answer)?;
                Ok(number)
            }
            Err(e) => {
                let _ = batch_tx.send(None);
                let _ = wait(answer);
                Err(e)
            }
        }
    }

    fn flush(&self) -> Result<()> {
        // Every batch was committed before `apply` returned.
        Ok(())
    }

    fn snapshot(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        // One REPEATABLE READ transaction read in pages on the connection's thread; the
        // pages come here, where `visit` runs. Writers are not held up.
        let (pages_tx, pages_rx) = mpsc::sync_channel::<Result<Vec<KeyValue>>>(2);
        let reader = self.submit(move |conn| {
            let result = (|| {
                let mut tx = conn
                    .client
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .map_err(pg)?;
                let portal = tx
                    .bind("SELECT k, v FROM myelin_kv ORDER BY k", &[])
                    .map_err(pg)?;
                loop {
                    let rows = tx.query_portal(&portal, MAX_PAGE as i32).map_err(pg)?;
                    if rows.is_empty() {
                        break;
                    }
                    let page = rows
                        .into_iter()
                        .map(|row| (row.get::<_, Vec<u8>>(0), row.get::<_, Vec<u8>>(1)))
                        .collect();
                    if pages_tx.send(Ok(page)).is_err() {
                        // The caller stopped reading.
                        break;
                    }
                }
                tx.commit().map_err(pg)
            })();
            if let Err(e) = result {
                let _ = pages_tx.send(Err(e));
            }
            Ok(())
        })?;
        // The job waits for room in the channel: read the pages before waiting for it.
        for page in pages_rx {
            for (k, v) in page? {
                visit(&k, &v)?;
            }
        }
        wait(reader)
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool> {
        let key = key.to_vec();
        let notice = self.notice(std::iter::once(&key));
        let old = old.map(<[u8]>::to_vec);
        self.run(move |conn| {
            let notify = match notice {
                Some(notice) => Some((conn.statement(NOTIFY)?, notice)),
                None => None,
            };
            // Shared: the swap and its notice commit together.
            if notify.is_some() {
                conn.client.batch_execute("BEGIN").map_err(pg)?;
            }
            let changed = (|| -> Result<bool> {
                Ok(match (old, new) {
                    (None, Some(new)) => {
                        let statement = conn.statement(INSERT_IF_ABSENT)?;
                        conn.client.execute(&statement, &[&key, &new]).map_err(pg)? == 1
                    }
                    (Some(old), Some(new)) => {
                        let statement = conn.statement(UPDATE_IF)?;
                        conn.client
                            .execute(&statement, &[&key, &old, &new])
                            .map_err(pg)?
                            == 1
                    }
                    (Some(old), None) => {
                        let statement = conn.statement(DELETE_IF)?;
                        conn.client.execute(&statement, &[&key, &old]).map_err(pg)? == 1
                    }
                    (None, None) => {
                        let statement = conn.statement(GET)?;
                        conn.client
                            .query_opt(&statement, &[&key])
                            .map_err(pg)?
                            .is_none()
                    }
                })
            })();
            if let Some((notify, notice)) = notify {
                let ended = match changed {
                    Ok(true) => conn
                        .client
                        .execute(&notify, &[&postgres_feed::CHANNEL, &notice])
                        .map_err(pg)
                        .and_then(|_| conn.client.batch_execute("COMMIT").map_err(pg)),
                    _ => conn.client.batch_execute("ROLLBACK").map_err(pg),
                };
                if let Err(e) = ended {
                    let _ = conn.client.batch_execute("ROLLBACK");
                    return Err(e);
                }
            }
            changed
        })
    }
}

/// A new, empty database on the test PostgreSQL server named by `MYELIN_TEST_POSTGRES_URL`
/// (a key=value connection string without `dbname`, e.g. `host=127.0.0.1 port=5432
/// user=myelin`; `spec-tests/run` starts such a server and sets it); returns its
/// connection string. Panics with a clear message when the variable is not set: these
/// tests do not skip.
#[cfg(test)]
pub(crate) fn test_database() -> String {
    let base = std::env::var("MYELIN_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "MYELIN_TEST_POSTGRES_URL is not set: the storage tests also run on PostgreSQL; \
             run them with spec-tests/run, which starts one, or point the variable at a \
             server (key=value form without dbname)"
        )
    });
    let name = format!(
        "myelin_test_{}_{}",
        std::process::id(),
        rand::random::<u64>()
    );
    let admin = format!("{base} dbname=postgres");
    let create = format!("CREATE DATABASE {name}");
    // The blocking client drives its own runtime: not on a test's runtime thread.
    thread::spawn(move || -> Result<()> {
        let mut client = Client::connect(&admin, NoTls).map_err(pg)?;
        client.batch_execute(&create).map_err(pg)
    })
    .join()
    .expect("creating the test database")
    .unwrap_or_else(|e| panic!("creating a test database on {base}: {e}"));
    format!("{base} dbname={name}")
}

mod writes;

#[cfg(test)]
mod tests;
