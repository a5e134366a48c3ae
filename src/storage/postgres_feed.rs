//! The change feed between processes sharing one PostgreSQL database: every batch a
//! process commits sends a notice on the `myelin_changes` channel inside its transaction
//! (`pg_notify`), which PostgreSQL delivers to every listening session after the commit,
//! in commit order, and not at all when the transaction rolls back. Each process listens
//! on a connection of its own and hands the other processes' notices to its
//! [`RemoteChanges`]. A listener that loses its connection reconnects and reports
//! [`RemoteChange::Everything`]: it may have missed notices meanwhile.
//!
//! A notice is `<process id, 16 hex digits> K <base64 of (u16 length, key)…>` — the keys
//! the batch wrote, each with its tree prefix — or, when that would not fit PostgreSQL's
//! payload limit (8,000 bytes), `<process id> T <hex of the trees' prefix bytes>`.
//! `LISTEN`/`NOTIFY` is PostgreSQL's; CockroachDB has no equivalent (its changefeeds
//! would take this place) and YugabyteDB does not support `LISTEN` (see README).

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use postgres::{fallible_iterator::FallibleIterator, Client, NoTls};

use super::remote::{RemoteChange, RemoteChanges};
use crate::{Error, Result};

/// The notification channel.
pub(super) const CHANNEL: &str = "myelin_changes";
/// The largest payload sent; PostgreSQL refuses 8,000 bytes and more.
const MAX_PAYLOAD: usize = 7_900;
/// How often the listener looks whether its engine is gone.
const POLL: Duration = Duration::from_millis(250);

/// The notice for a batch that wrote `keys`, sent by `process`.
pub(super) fn notice<'a>(process: u64, keys: impl Iterator<Item = &'a [u8]> + Clone) -> String {
    let mut packed = Vec::new();
    for key in keys.clone() {
        let Ok(len) = u16::try_from(key.len()) else {
            packed.clear();
            break;
        };
        packed.extend_from_slice(&len.to_be_bytes());
        packed.extend_from_slice(key);
        if packed.len().div_ceil(3) * 4 + 20 > MAX_PAYLOAD {
            packed.clear();
            break;
        }
    }
    if !packed.is_empty() {
        return format!("{process:016x} K {}", STANDARD.encode(packed));
    }
    let trees: BTreeSet<u8> = keys.filter_map(|k| k.first().copied()).collect();
    format!(
        "{process:016x} T {}",
        hex::encode(trees.into_iter().collect::<Vec<_>>())
    )
}

/// Reads a notice back: who sent it and what it changed. `None` for a payload this
/// version does not understand.
pub(super) fn parse(payload: &str) -> Option<(u64, RemoteChange)> {
    let mut parts = payload.splitn(3, ' ');
    let process = u64::from_str_radix(parts.next()?, 16).ok()?;
    let kind = parts.next()?;
    let body = parts.next().unwrap_or("");
    let change = match kind {
        "K" => {
            let packed = STANDARD.decode(body).ok()?;
            let mut keys = Vec::new();
            let mut rest = packed.as_slice();
            while !rest.is_empty() {
                let (len, tail) = rest.split_first_chunk::<2>()?;
                let len = usize::from(u16::from_be_bytes(*len));
                keys.push(tail.get(..len)?.to_vec());
                rest = &tail[len..];
            }
            RemoteChange::Keys(keys)
        }
        "T" => RemoteChange::Trees(hex::decode(body).ok()?),
        _ => return None,
    };
    Some((process, change))
}

/// The listening session: a thread with its own connection, ended when dropped.
pub(super) struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn pg(e: postgres::Error) -> Error {
    Error::Storage(format!("postgres: {e}"))
}

fn listen(url: &str) -> Result<Client> {
    let mut client = Client::connect(url, NoTls).map_err(pg)?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(pg)?;
    Ok(client)
}

impl Listener {
    /// Connects and listens before returning, so that no change committed after this
    /// call is missed; then hands other processes' notices to `changes`.
    pub(super) fn start(url: &str, process: u64, changes: Arc<RemoteChanges>) -> Result<Listener> {
        let stop = Arc::new(AtomicBool::new(false));
        // The blocking client drives a runtime of its own: it connects on its thread, which
        // reports once it listens.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = {
            let stop = stop.clone();
            let url = url.to_owned();
            thread::Builder::new()
                .name("myelin-pg-listen".into())
                .spawn(move || match listen(&url) {
                    Ok(client) => {
                        let _ = ready_tx.send(Ok(()));
                        run(client, &url, process, &changes, &stop);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                })
                .map_err(|e| Error::Storage(format!("starting the listener thread: {e}")))?
        };
        ready_rx
            .recv()
            .map_err(|_| Error::Storage("the listener thread failed".into()))??;
        Ok(Listener {
            stop,
            thread: Some(thread),
        })
    }
}

/// The listener's loop: notices in, reconnection after a lost connection.
fn run(mut client: Client, url: &str, process: u64, changes: &RemoteChanges, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let mut lost = false;
        {
            let mut notifications = client.notifications();
            let mut iter = notifications.timeout_iter(POLL);
            loop {
                match iter.next() {
                    Ok(Some(notification)) => {
                        if notification.channel() != CHANNEL {
                            continue;
                        }
                        match parse(notification.payload()) {
                            Some((from, _)) if from == process => {}
                            Some((_, change)) => changes.dispatch(&change),
                            None => {
                                tracing::warn!(
                                    payload = notification.payload(),
                                    "an unreadable change notice: treating everything as changed"
                                );
                                changes.dispatch(&RemoteChange::Everything);
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "the change listener lost its connection");
                        lost = true;
                        break;
                    }
                }
            }
        }
        if !lost && !client.is_closed() {
            continue;
        }
        // Reconnect; whatever was committed meanwhile went unannounced.
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            match listen(url) {
                Ok(fresh) => {
                    client = fresh;
                    changes.dispatch(&RemoteChange::Everything);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconnecting the change listener");
                    thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_fall_back_to_trees_when_too_long() {
        let keys = [b"\x10@a:x".to_vec(), b"\x11".to_vec(), vec![0x01; 300]];
        let text = notice(7, keys.iter().map(Vec::as_slice));
        assert!(text.len() < MAX_PAYLOAD);
        assert_eq!(parse(&text), Some((7, RemoteChange::Keys(keys.to_vec()))));

        let many: Vec<Vec<u8>> = (0..2_000u32)
            .map(|i| {
                let mut k = vec![if i % 2 == 0 { 0x20 } else { 0x30 }];
                k.extend_from_slice(&i.to_be_bytes());
                k
            })
            .collect();
        let text = notice(u64::MAX, many.iter().map(Vec::as_slice));
        assert!(text.len() < MAX_PAYLOAD);
        assert_eq!(
            parse(&text),
            Some((u64::MAX, RemoteChange::Trees(vec![0x20, 0x30])))
        );
        assert_eq!(parse("zz K"), None);
        assert_eq!(parse("0000000000000001 X abc"), None);
        assert_eq!(parse("0000000000000001 K AAU="), None);
    }
}

#[cfg(test)]
mod shared_tests {
    use std::{sync::mpsc, time::Duration};

    use super::super::{postgres_engine::test_database, Batch, Changed, Storage};

    /// What a handler saw: the keys, or `None` for "everything".
    type Seen = Option<Vec<Vec<u8>>>;

    fn watch(storage: &Storage, tree: &super::super::Tree) -> mpsc::Receiver<Seen> {
        let (tx, rx) = mpsc::channel();
        storage.on_remote_change(tree, move |changed| {
            let _ = tx.send(match changed {
                Changed::Keys(keys) => Some(keys.iter().map(|k| k.to_vec()).collect()),
                Changed::All => None,
            });
        });
        rx
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn processes_sharing_a_database_hear_each_others_commits() {
        let url = test_database();
        let a = Storage::open_postgres_shared(&url, 2).unwrap();
        let b = Storage::open_postgres_shared(&url, 2).unwrap();
        assert!(a.is_shared() && b.is_shared());
        let b_users = watch(&b, &b.trees.users);
        let b_profiles = watch(&b, &b.trees.profiles);
        let a_users = watch(&a, &a.trees.users);

        // One key, then a batch over two trees: each tree's handler gets its keys.
        a.trees.users.insert(b"@u:x", b"1").unwrap();
        assert_eq!(
            b_users.recv_timeout(WAIT).unwrap(),
            Some(vec![b"@u:x".to_vec()])
        );
        let mut batch = Batch::new();
        batch.insert(&a.trees.users, b"@v:x", b"1");
        batch.remove(&a.trees.users, b"@u:x");
        batch.insert(&a.trees.profiles, b"@v:x", b"{}");
        a.commit(batch).unwrap();
        let mut keys = b_users.recv_timeout(WAIT).unwrap().unwrap();
        keys.sort();
        assert_eq!(keys, vec![b"@u:x".to_vec(), b"@v:x".to_vec()]);
        assert_eq!(
            b_profiles.recv_timeout(WAIT).unwrap(),
            Some(vec![b"@v:x".to_vec()])
        );
        // What b reads after the notice is what a committed.
        assert_eq!(b.trees.users.get(b"@v:x").unwrap(), Some(b"1".to_vec()));

        // A swap that happens is announced; one that does not is not.
        assert!(a
            .trees
            .users
            .compare_and_swap(b"@v:x", Some(b"1"), Some(b"2".to_vec()))
            .unwrap());
        assert_eq!(
            b_users.recv_timeout(WAIT).unwrap(),
            Some(vec![b"@v:x".to_vec()])
        );
        assert!(!a
            .trees
            .users
            .compare_and_swap(b"@v:x", Some(b"1"), None)
            .unwrap());
        // Changes go both ways, and nobody hears its own.
        b.trees.users.insert(b"@w:x", b"1").unwrap();
        assert_eq!(
            a_users.recv_timeout(WAIT).unwrap(),
            Some(vec![b"@w:x".to_vec()])
        );
        assert!(b_users.recv_timeout(Duration::from_millis(300)).is_err());

        // A batch too large for a notice names its trees.
        let mut batch = Batch::new();
        for i in 0..3_000u32 {
            batch.insert(&a.trees.users, &i.to_be_bytes(), b"1");
        }
        a.commit(batch).unwrap();
        assert_eq!(b_users.recv_timeout(WAIT).unwrap(), None);
        assert!(b_profiles.recv_timeout(Duration::from_millis(300)).is_err());

        // A process that runs alone is kept out while sharing ones run.
        let refused = Storage::open_postgres(&url, 1).err().expect("refused");
        assert!(
            refused.to_string().contains("another Myelin process"),
            "{refused}"
        );

        // A listener that loses its connection comes back and reports that anything may
        // have changed; then hears commits again.
        let admin = url.clone();
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
            client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE query = 'LISTEN myelin_changes' AND pid <> pg_backend_pid()",
                    &[],
                )
                .unwrap();
        })
        .join()
        .unwrap();
        assert_eq!(b_users.recv_timeout(WAIT).unwrap(), None);
        assert_eq!(b_profiles.recv_timeout(WAIT).unwrap(), None);
        a.trees.users.insert(b"@z:x", b"1").unwrap();
        assert_eq!(
            b_users.recv_timeout(WAIT).unwrap(),
            Some(vec![b"@z:x".to_vec()])
        );
        assert!(b.remote_notices() >= 6);

        // And the other way round: once they are gone, a process alone keeps sharing
        // ones out.
        drop((a, b));
        let alone = Storage::open_postgres(&url, 1).unwrap();
        let refused = Storage::open_postgres_shared(&url, 1)
            .err()
            .expect("refused");
        assert!(refused.to_string().contains("does not share"), "{refused}");
        drop(alone);
    }
}
