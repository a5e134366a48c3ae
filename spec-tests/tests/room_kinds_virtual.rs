//! Virtual rooms (`io.myelin.virtual_room`): a name is required, power levels are the
//! server's whatever the request says, moderators promote to 50 and no higher, only the
//! owner demotes, nobody kicks or bans the owner, the last moderator cannot leave members
//! behind, and `/roles` tells who is who.

mod kinds_common;

use kinds_common::*;
use serde_json::json;
use spec_tests::{invite_and_join, Client, TestServer};

async fn users(server: &TestServer, names: &[&str]) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::new();
    for name in names {
        out.push(server.register(name).await?);
    }
    Ok(out)
}

#[tokio::test]
async fn a_virtual_room_needs_a_name() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    for body in [
        json!({"creation_content": {"type": VIRTUAL_ROOM}}),
        json!({"name": "  ", "creation_content": {"type": VIRTUAL_ROOM}}),
    ] {
        alice
            .post("/createRoom", body)
            .await?
            .expect_error(400, "M_INVALID_PARAM")?;
    }
    let sync = alice.sync("timeout=0").await?;
    assert!(
        sync["rooms"]["join"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "a refused createRoom left a room behind: {sync}"
    );
    create_virtual_room(&alice, "Town hall", json!({})).await?;
    Ok(())
}

#[tokio::test]
async fn the_override_cannot_change_the_owner_or_thresholds() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let u = users(&server, &["alice", "bob"]).await?;
    let (alice, bob) = (&u[0], &u[1]);
    let room = create_virtual_room(
        alice,
        "Town hall",
        json!({
            "preset": "trusted_private_chat",
            "invite": [bob.user_id],
            "power_level_content_override": {
                "users": { alice.user_id.as_str(): 50, bob.user_id.as_str(): 100 },
                "invite": 0, "kick": 0, "ban": 0, "redact": 0, "state_default": 0,
                "events_default": 20, "events": {"m.room.power_levels": 0},
            },
        }),
    )
    .await?;
    let pl = power_levels(alice, &room).await?;
    assert_eq!(pl["users"], json!({ alice.user_id.as_str(): 100 }), "{pl}");
    for (key, level) in [
        ("invite", 50),
        ("kick", 50),
        ("ban", 50),
        ("redact", 50),
        ("state_default", 50),
        ("events_default", 0),
        ("users_default", 0),
    ] {
        assert_eq!(pl[key], level, "{key} in {pl}");
    }
    assert_eq!(pl["events"]["m.room.power_levels"], 50, "{pl}");

    // later changes of the thresholds are refused too, the owner's included
    bob.join(&room).await?;
    for (key, value) in [
        ("invite", json!(0)),
        ("events_default", json!(50)),
        ("kick", json!(100)),
        ("events", json!({"m.room.power_levels": 0})),
    ] {
        let mut changed = pl.clone();
        changed[key] = value;
        let refused = alice
            .set_state(&room, "m.room.power_levels", "", changed)
            .await?;
        forbidden(&refused, "thresholds of this room are set by the server")?;
    }
    state_is(alice, &room, "m.room.power_levels", "", &pl).await?;
    // members (level 0) cannot invite in a virtual room
    let carol = server.register("carol").await?;
    member_action(bob, &room, "invite", &carol.user_id)
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    Ok(())
}

#[tokio::test]
async fn moderators_promote_to_fifty_and_only_the_owner_demotes() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let u = users(&server, &["alice", "bob", "carol", "dave"]).await?;
    let (alice, bob, carol, dave) = (&u[0], &u[1], &u[2], &u[3]);
    let room = create_virtual_room(alice, "Town hall", json!({})).await?;
    for who in [bob, carol, dave] {
        invite_and_join(alice, who, &room).await?;
    }
    // the owner makes bob a moderator; bob makes carol one
    set_level(alice, &room, &bob.user_id, 50).await?.ok()?;
    set_level(bob, &room, &carol.user_id, 50).await?.ok()?;
    // a moderator may invite
    let erin = server.register("erin").await?;
    bob.invite(&room, &erin.user_id).await?;
    let before = power_levels(alice, &room).await?;

    // bob cannot raise dave above 50, nor lower carol, nor touch the owner
    forbidden(
        &set_level(bob, &room, &dave.user_id, 100).await?,
        "Nobody can be raised to 100",
    )?;
    forbidden(
        &set_level(bob, &room, &dave.user_id, 75).await?,
        "no higher",
    )?;
    forbidden(
        &set_level(bob, &room, &carol.user_id, 0).await?,
        "Only the owner may lower a moderator",
    )?;
    set_level(bob, &room, &alice.user_id, 50)
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    // a member cannot promote anyone, themselves included
    set_level(dave, &room, &dave.user_id, 50)
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    // the owner cannot change their own level or raise anyone to 100
    forbidden(
        &set_level(alice, &room, &alice.user_id, 50).await?,
        "owner's power level cannot be changed",
    )?;
    forbidden(
        &set_level(alice, &room, &dave.user_id, 100).await?,
        "Nobody can be raised to 100",
    )?;
    // nobody kicks or bans the owner
    for action in ["kick", "ban"] {
        forbidden(
            &member_action(bob, &room, action, &alice.user_id).await?,
            "owner of this room cannot be kicked or banned",
        )?;
    }
    state_is(alice, &room, "m.room.power_levels", "", &before).await?;
    let r = roles(dave, &room).await?.ok()?;
    assert_eq!(r["kind"], "virtual_room", "{r}");
    assert_eq!(r["owner"], alice.user_id.as_str(), "{r}");
    let mut moderators = vec![bob.user_id.clone(), carol.user_id.clone()];
    moderators.sort();
    assert_eq!(r["moderators"], json!(moderators), "{r}");
    assert_eq!(r["members"], 4, "{r}");
    assert_eq!(r["invited"], 1, "{r}");
    assert!(r["max_members"].is_null(), "{r}");

    // the owner lowers carol; a moderator can kick a member
    set_level(alice, &room, &carol.user_id, 0).await?.ok()?;
    member_action(bob, &room, "kick", &dave.user_id)
        .await?
        .ok()?;
    let r = roles(alice, &room).await?.ok()?;
    assert_eq!(r["moderators"], json!([bob.user_id]), "{r}");
    assert_eq!(r["members"], 3, "{r}");
    Ok(())
}

#[tokio::test]
async fn the_last_moderator_promotes_someone_before_leaving() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let u = users(&server, &["alice", "bob", "carol"]).await?;
    let (alice, bob, carol) = (&u[0], &u[1], &u[2]);
    let room = create_virtual_room(alice, "Town hall", json!({})).await?;
    invite_and_join(alice, bob, &room).await?;
    invite_and_join(alice, carol, &room).await?;

    // the owner is the only moderator: refused, and still joined
    forbidden(
        &leave(alice, &room).await?,
        "promote another member to moderator before leaving",
    )?;
    assert_eq!(roles(alice, &room).await?.ok()?["members"], 3);
    // members leave freely
    leave(carol, &room).await?.ok()?;
    // after promoting bob the owner may go
    set_level(alice, &room, &bob.user_id, 50).await?.ok()?;
    leave(alice, &room).await?.ok()?;
    // bob, now the only moderator, cannot leave carol behind either
    bob.invite(&room, &carol.user_id).await?;
    carol.join(&room).await?;
    forbidden(
        &leave(bob, &room).await?,
        "promote another member to moderator before leaving",
    )?;
    // once carol has gone bob is alone and may leave
    leave(carol, &room).await?.ok()?;
    leave(bob, &room).await?.ok()?;

    // an owner alone in a room leaves at once
    let alone = create_virtual_room(alice, "Solo", json!({})).await?;
    leave(alice, &alone).await?.ok()?;
    Ok(())
}

#[tokio::test]
async fn roles_are_for_members_and_rooms_that_exist() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let u = users(&server, &["alice", "bob"]).await?;
    let (alice, bob) = (&u[0], &u[1]);
    let room = create_virtual_room(alice, "Town hall", json!({})).await?;
    forbidden(&roles(bob, &room).await?, "not joined")?;
    // invited is not joined yet
    alice.invite(&room, &bob.user_id).await?;
    roles(bob, &room).await?.expect_error(403, "M_FORBIDDEN")?;
    roles(bob, &format!("!nope:{}", server.server_name))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    let conversation = alice.create_room(json!({})).await?;
    let r = roles(alice, &conversation).await?.ok()?;
    assert_eq!(r["kind"], "conversation", "{r}");
    assert!(r["owner"].is_null(), "{r}");
    assert_eq!(r["moderators"], json!([alice.user_id]), "{r}");
    assert_eq!(r["members"], 1, "{r}");
    Ok(())
}

#[tokio::test]
async fn a_deactivated_owner_leaves_even_as_last_moderator() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let u = users(&server, &["alice", "bob"]).await?;
    let (alice, bob) = (&u[0], &u[1]);
    let room = create_virtual_room(alice, "Town hall", json!({})).await?;
    invite_and_join(alice, bob, &room).await?;
    let first = alice.post("/account/deactivate", json!({})).await?;
    let session = first.body["session"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    alice
        .post(
            "/account/deactivate",
            json!({"auth": {"type": "m.login.password", "session": session,
                            "identifier": {"type": "m.id.user", "user": "alice"},
                            "password": "alice-password"}}),
        )
        .await?
        .ok()?;
    let r = roles(bob, &room).await?.ok()?;
    assert_eq!(
        r["members"], 1,
        "the deactivated owner is still joined: {r}"
    );
    // the rule still binds the living: bob, alone, leaves freely
    leave(bob, &room).await?.ok()?;
    Ok(())
}

#[tokio::test]
async fn groups_and_virtual_rooms_are_not_upgraded() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = create_virtual_room(&alice, "Town hall", json!({})).await?;
    let group = create_group(&alice, json!({})).await?;
    for (room, words) in [
        (&room, "virtual room cannot be upgraded"),
        (&group, "group cannot be upgraded"),
    ] {
        let refused = alice
            .post(
                &format!("/rooms/{}/upgrade", spec_tests::enc(room)),
                json!({"new_version": "11"}),
            )
            .await?;
        forbidden(&refused, words)?;
    }
    let sync = alice.sync("timeout=0").await?;
    assert_eq!(
        sync["rooms"]["join"].as_object().map(|m| m.len()),
        Some(2),
        "a refused upgrade left a room behind: {sync}"
    );
    Ok(())
}
