//! Groups (`io.myelin.group`): any member invites, at most `groups.max_members` users
//! joined plus invited (the invite, join or knock that would go over: 403), the
//! creator is the owner whom nobody kicks or bans, and `/roles` tells the cap.

mod kinds_common;

use kinds_common::*;
use serde_json::json;
use spec_tests::{enc, invite_and_join, Client, TestServer};

async fn users(server: &TestServer, names: &[&str]) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::new();
    for name in names {
        out.push(server.register(name).await?);
    }
    Ok(out)
}

#[tokio::test]
async fn any_member_invites_up_to_the_default_cap_of_five() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let u = users(&server, &["owner", "b", "c", "d", "e", "f"]).await?;
    let (owner, b, f) = (&u[0], &u[1], &u[5]);
    let group = create_group(owner, json!({"name": "Lunch"})).await?;
    let pl = power_levels(owner, &group).await?;
    assert_eq!(pl["invite"], 0, "{pl}");
    assert_eq!(pl["users"], json!({ owner.user_id.as_str(): 100 }), "{pl}");

    // b joins and, as a plain member (level 0), invites c, d and e: five, joined or invited
    invite_and_join(owner, b, &group).await?;
    for who in &u[2..5] {
        b.invite(&group, &who.user_id).await?;
    }
    let refused = member_action(b, &group, "invite", &f.user_id).await?;
    forbidden(&refused, "at most 5 members")?;
    let refused = member_action(owner, &group, "invite", &f.user_id).await?;
    forbidden(&refused, "This group is full")?;
    // the refusal wrote nothing: f has no invite
    let sync = f.sync("timeout=0").await?;
    assert!(sync["rooms"]["invite"][&group].is_null(), "{sync}");

    // invited users count: accepting an invite is not refused
    u[2].join(&group).await?;
    // one invited user declines: a place is free again
    leave(&u[3], &group).await?.ok()?;
    b.invite(&group, &f.user_id).await?;
    f.join(&group).await?;

    let r = roles(b, &group).await?.ok()?;
    assert_eq!(r["kind"], "group", "{r}");
    assert_eq!(r["owner"], owner.user_id.as_str(), "{r}");
    assert_eq!(r["moderators"], json!([]), "{r}");
    assert_eq!(r["members"], 4, "{r}");
    assert_eq!(r["invited"], 1, "{r}");
    assert_eq!(r["max_members"], 5, "{r}");
    Ok(())
}

#[tokio::test]
async fn the_join_and_knock_over_the_cap_are_refused() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let u = users(&server, &["owner", "b", "c", "d", "e", "f"]).await?;
    let owner = &u[0];

    // a public group: four join, the sixth is refused
    let public = create_group(owner, json!({"preset": "public_chat"})).await?;
    for who in &u[1..5] {
        who.join(&public).await?;
    }
    let refused = u[5]
        .post(&format!("/join/{}", enc(&public)), json!({}))
        .await?;
    forbidden(&refused, "This group is full")?;
    assert_eq!(roles(owner, &public).await?.ok()?["members"], 5);

    // a knockable group: the owner invites three, a fourth user knocks (counted once
    // invited), a fifth knock would make six and is refused
    let knock = create_group(
        owner,
        json!({"initial_state": [{"type": "m.room.join_rules", "state_key": "",
                                   "content": {"join_rule": "knock"}}]}),
    )
    .await?;
    for who in &u[1..4] {
        owner.invite(&knock, &who.user_id).await?;
    }
    u[4].post(&format!("/knock/{}", enc(&knock)), json!({}))
        .await?
        .ok()?;
    owner.invite(&knock, &u[4].user_id).await?;
    let refused = u[5]
        .post(&format!("/knock/{}", enc(&knock)), json!({}))
        .await?;
    forbidden(&refused, "at most 5 members")?;
    Ok(())
}

#[tokio::test]
async fn a_configured_cap_applies_to_invites_and_create_room() -> anyhow::Result<()> {
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_GROUPS_MAX_MEMBERS", "3"),
    ])
    .await?;
    let u = users(&server, &["owner", "b", "c", "d"]).await?;
    let owner = &u[0];
    let group = create_group(owner, json!({"invite": [u[1].user_id, u[2].user_id]})).await?;
    forbidden(
        &member_action(owner, &group, "invite", &u[3].user_id).await?,
        "at most 3 members",
    )?;
    assert_eq!(roles(owner, &group).await?.ok()?["max_members"], 3);

    // createRoom inviting more than the cap creates nothing
    let refused = owner
        .post(
            "/createRoom",
            json!({"creation_content": {"type": GROUP},
                   "invite": [u[1].user_id, u[2].user_id, u[3].user_id]}),
        )
        .await?;
    forbidden(&refused, "at most 3 members")?;
    let sync = u[3].sync("timeout=0").await?;
    assert!(
        sync["rooms"]["invite"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{sync}"
    );
    // conversations have no cap
    owner
        .create_room(json!({"invite": [u[1].user_id, u[2].user_id, u[3].user_id]}))
        .await?;
    Ok(())
}

#[tokio::test]
async fn group_owner_is_protected_and_promotes_moderators() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let u = users(&server, &["owner", "b", "c"]).await?;
    let (owner, b, c) = (&u[0], &u[1], &u[2]);
    let group = create_group(
        owner,
        json!({"power_level_content_override": {"invite": 50, "users": {}}}),
    )
    .await?;
    // the override changed nothing
    let pl = power_levels(owner, &group).await?;
    assert_eq!(pl["invite"], 0, "{pl}");
    assert_eq!(pl["users"][&owner.user_id], 100, "{pl}");
    invite_and_join(owner, b, &group).await?;
    invite_and_join(b, c, &group).await?;
    // the owner makes b a moderator; b cannot kick or ban the owner
    set_level(owner, &group, &b.user_id, 50).await?.ok()?;
    forbidden(
        &member_action(b, &group, "kick", &owner.user_id).await?,
        "owner of this room cannot be kicked or banned",
    )?;
    forbidden(
        &member_action(b, &group, "ban", &owner.user_id).await?,
        "owner of this room cannot be kicked or banned",
    )?;
    // nobody raises anyone to 100
    forbidden(
        &set_level(owner, &group, &c.user_id, 100).await?,
        "Nobody can be raised to 100",
    )?;
    let r = roles(c, &group).await?.ok()?;
    assert_eq!(r["moderators"], json!([b.user_id]), "{r}");
    // in a group the last moderator may leave (the last-moderator rule is for virtual rooms)
    leave(owner, &group).await?.ok()?;
    leave(b, &group).await?.ok()?;
    Ok(())
}
