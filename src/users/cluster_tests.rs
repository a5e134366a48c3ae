//! Two processes sharing one PostgreSQL database: what one writes through its users
//! service, the other's caches, indexes and long polls see.

use std::{future::Future, sync::Arc};

use ruma::UserId;
use serde_json::json;

use super::UsersService;
use crate::{
    config::Config,
    storage::{test_database, Storage},
    stream::{
        test_support::{eventually, woken_after},
        Notifier,
    },
};

/// The users services of two processes on one fresh database.
fn two_processes() -> (UsersService, UsersService) {
    let url = test_database();
    let open = || {
        UsersService::new(
            Arc::new(Config::default()),
            Arc::new(Storage::open_postgres_shared(&url, 2).unwrap()),
            Arc::new(Notifier::new()),
        )
        .unwrap()
    };
    (open(), open())
}

/// Waits until B has seen every user-data change A made so far (so that a wake-up
/// expected next is not one for an earlier change).
async fn caught_up(a: &UsersService, b: &UsersService) -> u64 {
    let pos = a.current_userdata_pos();
    eventually("B reaches A's user-data position", || {
        b.current_userdata_pos() >= pos
    })
    .await;
    b.current_userdata_pos()
}

/// Runs `write` while a long poll of `user` waits on `s`; `s`'s user-data position when
/// a wake-up found it past `since` (`None`: not in time).
async fn wakes(
    s: &UsersService,
    user: &UserId,
    since: u64,
    write: impl Future<Output = ()>,
) -> Option<u64> {
    woken_after(&s.notifier, user, write, || {
        s.current_userdata_pos() > since
    })
    .await
    .then(|| s.current_userdata_pos())
}

#[tokio::test]
async fn a_token_removed_by_one_process_is_refused_by_the_other() {
    let (a, b) = two_processes();
    let alice = a.create_user("alice", None, false).unwrap();
    let (token, _) = a.create_session(&alice, None, None).await.unwrap();
    // Once B has heard of the login (and of a later change), B caches the session...
    a.set_account_data(&alice, None, "m.direct", json!({}))
        .await
        .unwrap();
    caught_up(&a, &b).await;
    let session = b.authenticate(&token).unwrap();
    assert_eq!(b.token_cache.len(), 1);
    // ... and refuses it once A logged it out.
    a.logout(&session).await.unwrap();
    eventually("the token is refused on B", || {
        b.authenticate(&token).is_err()
    })
    .await;
    assert_eq!(
        b.authenticate(&token).unwrap_err().errcode(),
        "M_UNKNOWN_TOKEN"
    );
}

#[tokio::test]
async fn account_data_set_by_one_process_reaches_the_others_syncs() {
    let (a, b) = two_processes();
    let alice = a.create_user("alice", None, false).unwrap();
    let since = caught_up(&a, &b).await;
    assert!(b.account_data_since(&alice, since).unwrap().0.is_empty());
    // A long poll of alice on B wakes once B's position shows the change.
    let woken_at = wakes(&b, &alice, since, async {
        a.set_account_data(&alice, None, "m.direct", json!({"x": 1}))
            .await
            .unwrap();
    })
    .await
    .expect("alice's long poll on B is woken");
    let (global, _) = b.account_data_since(&alice, since).unwrap();
    assert_eq!(global, vec![("m.direct".to_owned(), json!({"x": 1}))]);
    // Nothing new after B's position.
    assert!(b.account_data_since(&alice, woken_at).unwrap().0.is_empty());
}

#[tokio::test]
async fn presence_set_by_one_process_reaches_the_others_syncs() {
    let (a, b) = two_processes();
    let alice = a.create_user("alice", None, false).unwrap();
    let since = caught_up(&a, &b).await;
    let woken_at = wakes(&b, &alice, since, async {
        a.set_presence(&alice, "unavailable", Some("away".into()))
            .unwrap();
    })
    .await
    .expect("alice's long poll on B is woken");
    assert_eq!(b.presence_changed_since(since), vec![alice.clone()]);
    let events = b
        .presence_since(std::slice::from_ref(&alice), since)
        .unwrap();
    assert_eq!(events[0]["content"]["presence"], "unavailable");
    assert!(b.presence_changed_since(woken_at).is_empty());
}

#[tokio::test]
async fn thread_subscriptions_changed_by_one_process_wake_the_others_long_polls() {
    let (a, b) = two_processes();
    let alice = a.create_user("alice", None, false).unwrap();
    let room = ruma::room_id!("!r:localhost");
    let root = ruma::event_id!("$root");
    let since = caught_up(&a, &b).await;
    let woken_at = wakes(&b, &alice, since, async {
        a.subscribe_thread(&alice, room, root, super::Subscription::Manual)
            .unwrap();
    })
    .await
    .expect("alice's long poll on B is woken");
    let changes = b
        .thread_subscription_changes(&alice, since, woken_at, 10)
        .unwrap();
    assert_eq!(changes.changes.len(), 1);
}

#[tokio::test]
async fn a_registration_nonce_from_one_process_is_accepted_once_by_either() {
    let url = test_database();
    let open = || {
        let mut config = Config::default();
        config.registration.shared_secret = "s3cret".into();
        UsersService::new(
            Arc::new(config),
            Arc::new(Storage::open_postgres_shared(&url, 2).unwrap()),
            Arc::new(Notifier::new()),
        )
        .unwrap()
    };
    let (a, b) = (open(), open());
    let nonce = a.issue_registration_nonce().await.unwrap();
    let mac = hex::encode(
        super::shared_secret::registration_mac("s3cret", &nonce, "bob", "pw", false).unwrap(),
    );
    b.check_shared_secret_registration(&nonce, "bob", "pw", false, &mac)
        .unwrap();
    for s in [&a, &b] {
        assert!(s
            .check_shared_secret_registration(&nonce, "bob", "pw", false, &mac)
            .is_err());
    }
}

#[tokio::test]
async fn every_process_accepts_the_newest_operator_token() {
    let (a, b) = two_processes();
    let dir = tempfile::tempdir().unwrap();
    let read = || {
        std::fs::read_to_string(dir.path().join(super::operator::OPERATOR_TOKEN_FILE))
            .unwrap()
            .trim()
            .to_owned()
    };
    a.install_operator_token(dir.path()).unwrap();
    let first = read();
    assert!(a.is_operator_token(&first));
    // B starts on the same data dir: its token replaces A's file, and both accept it.
    b.install_operator_token(dir.path()).unwrap();
    let newest = read();
    assert_ne!(first, newest);
    assert!(a.is_operator_token(&newest));
    assert!(b.is_operator_token(&newest));
    assert!(!a.is_operator_token(&first));
}
