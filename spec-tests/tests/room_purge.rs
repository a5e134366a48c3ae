//! Groups are not persistent: when the last joined member leaves, pending invites are
//! withdrawn (the invitee sees the room move to `leave`), then the room is purged — no
//! storage entry mentions it, join, `/state` and `/messages` answer 404, its alias is
//! free, syncs go on without it — and a purge cut by a crash is finished at restart.
//! Uses the test hooks (`/_myelin/test/room_keys`, failpoints).

mod kinds_common;
mod purge_common;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kinds_common::*;
use purge_common::*;
use serde_json::json;
use spec_tests::{enc, invite_and_join, next_batch, Client, TestServer};

/// A group of `owner` and `member` with alias `alias`, a message, a notification record
/// and room account data; the invitee `pending` is invited and not joined.
async fn busy_group(
    owner: &Client,
    member: &Client,
    pending: &Client,
    alias: &str,
) -> Result<String> {
    let group = create_group(owner, json!({ "room_alias_name": alias })).await?;
    invite_and_join(owner, member, &group).await?;
    owner.invite(&group, &pending.user_id).await?;
    owner.say(&group, "lunch?").await?;
    member
        .put(
            &format!(
                "/user/{}/rooms/{}/tags/u.food",
                enc(&member.user_id),
                enc(&group)
            ),
            json!({}),
        )
        .await?
        .ok()?;
    Ok(group)
}

#[tokio::test]
async fn the_last_leave_of_a_group_withdraws_invites_then_purges_it() -> Result<()> {
    let server = TestServer::start().await?;
    let owner = server.register("owner").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let group = busy_group(&owner, &bob, &carol, "lunch").await?;
    let before = room_keys(&owner, &group).await?;
    for tree in [
        "pdus",
        "room_timeline",
        "room_state",
        "aliases",
        "account_data",
    ] {
        assert!(before["trees"][tree].as_u64() > Some(0), "{tree}: {before}");
    }
    let first = carol.sync("timeout=0").await?;
    assert!(first["rooms"]["invite"][&group].is_object(), "{first}");
    let since = next_batch(&first);

    // Hold the purge once it starts, so the withdrawal is seen before the room goes.
    set_failpoint(&owner, "purge.rooms", "pause").await?;
    leave(&owner, &group).await?.ok()?;
    leave(&bob, &group).await?.ok()?;
    let events = wait_sync_leave(&carol, &since, &group).await?;
    let withdrawn = events
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == carol.user_id.as_str())
        .unwrap_or_else(|| panic!("no member event for carol: {events:?}"));
    assert_eq!(withdrawn["content"]["membership"], "leave", "{withdrawn}");
    assert!(
        withdrawn["content"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("dissolved")),
        "{withdrawn}"
    );
    remove_failpoint(&owner, "purge.rooms").await?;

    wait_room_keys_gone(&owner, &group).await?;
    for who in [&owner, &bob, &carol] {
        room_is_gone(who, &group).await?;
    }
    owner
        .get(&format!("/directory/room/{}", enc("#lunch:localhost")))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    // the alias is free again
    let again = owner
        .create_room(json!({ "room_alias_name": "lunch" }))
        .await?;
    assert_ne!(again, group);
    // syncs go on, without the room
    let later = carol
        .sync(&format!("since={}&timeout=0", enc(&since)))
        .await?;
    for section in ["join", "invite", "leave"] {
        assert!(later["rooms"][section][&group].is_null(), "{later}");
    }
    let full = bob.sync("timeout=0").await?;
    assert!(!full.to_string().contains(group.as_str()), "{full}");
    let ss = sliding(&bob, None, 0).await?;
    assert!(ss["rooms"][&group].is_null(), "{ss}");
    Ok(())
}

#[tokio::test]
async fn a_group_with_a_member_left_is_kept() -> Result<()> {
    let server = TestServer::start().await?;
    let owner = server.register("owner").await?;
    let bob = server.register("bob").await?;
    let group = create_group(&owner, json!({})).await?;
    invite_and_join(&owner, &bob, &group).await?;
    leave(&owner, &group).await?.ok()?;
    // once the dissolution consumer has seen the leave, the room is still there
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = owner
            .request(reqwest::Method::GET, "/_myelin/test/positions", None)
            .await?
            .ok()?;
        if p["consumers"]["group_dissolution"].as_u64() >= p["applied"].as_u64() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the dissolution consumer never caught up: {p}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bob.get(&format!("/rooms/{}/state", enc(&group)))
        .await?
        .ok()?;
    bob.say(&group, "still here").await?;
    assert!(room_keys(&bob, &group).await?["total"].as_u64() > Some(0));
    Ok(())
}

#[tokio::test]
async fn a_purge_cut_by_a_crash_is_finished_at_restart() -> Result<()> {
    let mut server = TestServer::start().await?;
    let owner = server.register("owner").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let group = busy_group(&owner, &bob, &carol, "crash").await?;
    // stop after the rooms' part: the room is gone, its push records and account data
    // are not
    set_failpoint(&owner, "purge.push", "pause").await?;
    leave(&owner, &group).await?.ok()?;
    leave(&bob, &group).await?.ok()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let halfway = loop {
        let keys = room_keys(&owner, &group).await?;
        if keys["trees"]["rooms"].is_null() && keys["trees"]["pdus"].is_null() {
            break keys;
        }
        if Instant::now() > deadline {
            bail!("the rooms' part was never purged: {keys}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        halfway["trees"]["account_data"].as_u64() > Some(0)
            && halfway["trees"]["event_push"].as_u64() > Some(0),
        "{halfway}"
    );
    server.kill9()?;
    server.start_again().await?;
    wait_room_keys_gone(&owner, &group).await?;
    room_is_gone(&bob, &group).await?;
    Ok(())
}
