//! Tests of the PostgreSQL engine (a database of their own on the test server).
use super::*;

#[test]
fn pages_cover_long_ranges_both_ways_and_batches_keep_the_last_write() {
    let engine = PostgresEngine::connect(&test_database(), 2).unwrap();
    let mut batch = RawBatch::default();
    for i in 0..2500u32 {
        batch
            .ops
            .push((i.to_be_bytes().to_vec(), Some(b"v".to_vec())));
    }
    // The same key written, removed and written again: the last write counts.
    batch.ops.push((b"x".to_vec(), Some(b"1".to_vec())));
    batch.ops.push((b"x".to_vec(), None));
    batch.ops.push((b"y".to_vec(), Some(b"1".to_vec())));
    batch.ops.push((b"y".to_vec(), Some(b"2".to_vec())));
    engine.apply(batch).unwrap();
    assert_eq!(engine.get(b"x").unwrap(), None);
    assert_eq!(engine.get(b"y").unwrap(), Some(b"2".to_vec()));

    let start = 10u32.to_be_bytes().to_vec();
    let end = 2400u32.to_be_bytes().to_vec();
    let forward: Vec<u32> = engine
        .range(
            Bound::Included(start.clone()),
            Bound::Excluded(end.clone()),
            false,
        )
        .map(|kv| u32::from_be_bytes(kv.unwrap().0.try_into().unwrap()))
        .collect();
    assert_eq!(forward, (10..2400).collect::<Vec<_>>());
    let backward: Vec<u32> = engine
        .range(Bound::Excluded(start), Bound::Included(end), true)
        .map(|kv| u32::from_be_bytes(kv.unwrap().0.try_into().unwrap()))
        .collect();
    assert_eq!(backward, (11..=2400).rev().collect::<Vec<_>>());
    assert_eq!(
        engine
            .range(Bound::Unbounded, Bound::Unbounded, false)
            .count(),
        2501
    );

    // A snapshot sees every pair in order.
    let mut seen = Vec::new();
    engine
        .snapshot(&mut |k, _| {
            seen.push(k.to_vec());
            Ok(())
        })
        .unwrap();
    assert_eq!(seen.len(), 2501);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    // A visitor that stops early stops the snapshot with its error.
    let mut n = 0;
    let stopped = engine.snapshot(&mut |_, _| {
        n += 1;
        if n == 5 {
            Err(Error::Storage("enough".into()))
        } else {
            Ok(())
        }
    });
    assert!(stopped.is_err());
    // The connection is usable afterwards.
    assert_eq!(engine.get(b"y").unwrap(), Some(b"2".to_vec()));
}

#[test]
fn data_survives_a_new_connection_and_cas_is_atomic() {
    let url = test_database();
    {
        let engine = PostgresEngine::connect(&url, 1).unwrap();
        let mut batch = RawBatch::default();
        batch.ops.push((b"k".to_vec(), Some(b"v".to_vec())));
        engine.apply(batch).unwrap();
    }
    let engine = Arc::new(PostgresEngine::connect(&url, 4).unwrap());
    assert_eq!(engine.get(b"k").unwrap(), Some(b"v".to_vec()));
    // A second process on the same database is refused while this one lives.
    let refused = PostgresEngine::connect(&url, 1)
        .err()
        .expect("a second engine");
    assert!(
        refused.to_string().contains("another Myelin process"),
        "{refused}"
    );
    // Eight threads race to take one key: exactly one wins.
    let winners: usize = (0..8)
        .map(|i| {
            let engine = engine.clone();
            thread::spawn(move || {
                engine
                    .compare_and_swap(b"lease", None, Some(vec![i]))
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| usize::from(t.join().unwrap()))
        .sum();
    assert_eq!(winners, 1);
    assert!(!engine.compare_and_swap(b"k", None, None).unwrap());
    assert!(engine.compare_and_swap(b"absent", None, None).unwrap());
    assert!(engine.compare_and_swap(b"k", Some(b"v"), None).unwrap());
    assert_eq!(engine.get(b"k").unwrap(), None);
}

#[test]
fn a_database_lock_holds_other_processes_until_dropped() {
    let url = test_database();
    let changes = || Arc::new(RemoteChanges::default());
    let a = PostgresEngine::connect_shared(&url, 1, changes()).unwrap();
    let b = Arc::new(PostgresEngine::connect_shared(&url, 1, changes()).unwrap());
    let held = a.lock(42).unwrap();
    // Another name is free.
    drop(b.lock(43).unwrap());
    let (taken_tx, taken_rx) = mpsc::channel();
    let waiter = {
        let b = b.clone();
        thread::spawn(move || {
            let guard = b.lock(42).unwrap();
            taken_tx.send(()).unwrap();
            drop(guard);
        })
    };
    assert!(taken_rx
        .recv_timeout(std::time::Duration::from_millis(300))
        .is_err());
    drop(held);
    taken_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    waiter.join().unwrap();
    // Sessions are reused: the lock is free again and taken at once.
    drop(a.lock(42).unwrap());
    drop(b.lock(42).unwrap());
}
