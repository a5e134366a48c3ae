//! Purges across the domains, dissolution and delete on the in-memory engine.

use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::{json, Map};

use crate::{
    config::Config,
    rooms::{CreateRoom, MemberProfile, Membership, GROUP_TYPE, VIRTUAL_ROOM_TYPE},
    services::Services,
};

fn user(name: &str) -> OwnedUserId {
    UserId::parse(format!("@{name}:localhost")).unwrap()
}

fn services() -> Arc<Services> {
    Services::in_memory(Config::default()).unwrap()
}

async fn room_of(s: &Services, creator: &UserId, kind: Option<&str>) -> OwnedRoomId {
    let mut creation = Map::new();
    if let Some(kind) = kind {
        creation.insert("type".into(), json!(kind));
    }
    let req = CreateRoom {
        preset: kind.is_none().then(|| "public_chat".to_owned()),
        name: Some("Room".into()),
        creation_content: Some(creation),
        ..CreateRoom::default()
    };
    s.rooms.create_room(creator, req).await.unwrap()
}

fn mentions(s: &Services, room: &ruma::RoomId) -> usize {
    s.storage()
        .entries_mentioning(room.as_bytes())
        .unwrap()
        .values()
        .sum()
}

/// Waits (bounded) until `f` holds.
async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn purge_leaves_no_key_mentioning_the_room_and_finishes_after_a_marker() {
    let s = services();
    let (alice, bob) = (user("alice"), user("bob"));
    let room = room_of(&s, &alice, None).await;
    s.rooms
        .join(&room, &bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    s.users
        .set_room_account_data(&bob, &room, "m.tag", json!({"tags": {}}))
        .unwrap();
    assert!(mentions(&s, &room) > 0);
    s.purge.purge(&room).await.unwrap();
    assert_eq!(
        s.storage().entries_mentioning(room.as_bytes()).unwrap(),
        Default::default()
    );
    // A purge marker left by a crash is finished by `resume`.
    let other = room_of(&s, &alice, None).await;
    s.rooms
        .join(&other, &bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    s.storage()
        .trees
        .meta
        .insert(
            &crate::storage::keys::strs(&["purging", other.as_str()]),
            &serde_json::to_vec(&json!({"users": [alice, bob]})).unwrap(),
        )
        .unwrap();
    s.purge.resume().await.unwrap();
    assert_eq!(mentions(&s, &other), 0);
}

#[tokio::test]
async fn a_group_dissolves_when_its_last_member_leaves() {
    let s = services();
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let group = room_of(&s, &alice, Some(GROUP_TYPE)).await;
    s.rooms
        .invite(&group, &alice, &bob, None, false, None)
        .await
        .unwrap();
    s.rooms
        .join(&group, &bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    s.rooms
        .invite(&group, &bob, &carol, None, false, None)
        .await
        .unwrap();
    s.rooms.leave(&group, &alice, None).await.unwrap();
    // Bob is still there: nothing happens.
    let pos = s.rooms.current_pos();
    assert!(eventually(|| s.pipeline.positions().iter().all(|(_, p)| *p >= pos)).await);
    assert!(s.rooms.exists(&group).unwrap());
    s.rooms.leave(&group, &bob, None).await.unwrap();
    assert!(eventually(|| !s.rooms.exists(&group).unwrap()).await);
    assert!(eventually(|| mentions(&s, &group) == 0).await);
    assert!(s.rooms.user_rooms(&carol).unwrap().is_empty());
}

#[tokio::test]
async fn a_conversation_does_not_dissolve() {
    let s = services();
    let alice = user("alice");
    let room = room_of(&s, &alice, None).await;
    s.rooms.leave(&room, &alice, None).await.unwrap();
    let pos = s.rooms.current_pos();
    assert!(eventually(|| s.pipeline.positions().iter().all(|(_, p)| *p >= pos)).await);
    assert!(s.rooms.exists(&room).unwrap());
}

#[tokio::test]
async fn delete_is_for_the_owner_of_a_group_or_virtual_room() {
    let s = services();
    let (alice, bob) = (user("alice"), user("bob"));
    let room = room_of(&s, &alice, Some(VIRTUAL_ROOM_TYPE)).await;
    s.rooms
        .invite(&room, &alice, &bob, None, false, None)
        .await
        .unwrap();
    s.rooms
        .join(&room, &bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    let before = s.rooms.current_pos();
    let err = s.purge.delete_room(&room, &bob).await.unwrap_err();
    assert_eq!(err.errcode(), "M_FORBIDDEN");
    assert_eq!(s.rooms.current_pos(), before, "a refusal writes nothing");
    let conversation = room_of(&s, &alice, None).await;
    let err = s
        .purge
        .delete_room(&conversation, &alice)
        .await
        .unwrap_err();
    assert_eq!(err.errcode(), "M_FORBIDDEN");
    assert!(s.rooms.exists(&conversation).unwrap());
    let unknown = ruma::RoomId::parse("!nope:localhost").unwrap();
    let err = s.purge.delete_room(&unknown, &alice).await.unwrap_err();
    assert_eq!(err.errcode(), "M_NOT_FOUND");

    s.purge.delete_room(&room, &alice).await.unwrap();
    assert!(!s.rooms.exists(&room).unwrap());
    assert_eq!(mentions(&s, &room), 0);
    assert!(s.rooms.user_rooms(&bob).unwrap().is_empty());
    assert_eq!(s.rooms.members(&room).unwrap().count(Membership::Join), 0);
}
