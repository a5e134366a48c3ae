//! Deleting rooms: the owner of a virtual room or group deletes it
//! (`DELETE /_matrix/client/unstable/io.myelin/rooms/{roomId}`): every member and invitee
//! sees it move to `leave` in `/sync` and sliding sync, the call's participants are
//! disconnected by the SFU, then the room is purged. Refused (writing nothing) to a
//! moderator, a member and in conversations; 404 for an unknown room. Administrators
//! delete any room with the Synapse admin API (v1 at once, v2 with a delete status).
//! Someone kicked from a room (or leaving it) is disconnected from its call at once and
//! cannot come back with the token they had; a new membership brings a new token.

mod kinds_common;
mod purge_common;

use std::time::Duration;

use anyhow::{Context, Result};
use kinds_common::*;
use livekit_protocol as proto;
use myelin_sfu::client::{Client as SfuClient, Event};
use purge_common::*;
use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, http_client, invite_and_join, next_batch, Client, TestServer};

/// An SFU token for `c`'s device `device` in the room's call, from the token service
/// the server advertises.
async fn sfu_jwt(c: &Client, room: &str, device: &str) -> Result<String> {
    let transports = c
        .request(
            Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
            None,
        )
        .await?
        .ok()?;
    let service = transports["rtc_transports"][0]["livekit_service_url"]
        .as_str()
        .with_context(|| format!("livekit_service_url: {transports}"))?;
    let body = json!({"room": room, "openid_token": c.openid_token().await?, "device_id": device});
    let grant: Value = http_client(Duration::from_secs(30))
        .post(format!("{service}/sfu/get"))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    Ok(grant["jwt"]
        .as_str()
        .with_context(|| format!("jwt: {grant}"))?
        .to_owned())
}

/// The last event id of the room's timeline as `c` reads it.
async fn last_event(c: &Client, room: &str) -> Result<Value> {
    let page = c
        .get(&format!("/rooms/{}/messages?dir=b&limit=1", enc(room)))
        .await?
        .ok()?;
    Ok(page["chunk"][0]["event_id"].clone())
}

#[tokio::test]
async fn the_owner_deletes_a_virtual_room_members_see_it_go_and_the_call_ends() -> Result<()> {
    let (server, sfu_url) = TestServer::start_with_sfu(&[]).await?;
    let owner = server.register("owner").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room =
        create_virtual_room(&owner, "Standup", json!({"room_alias_name": "standup"})).await?;
    invite_and_join(&owner, &bob, &room).await?;
    owner.invite(&room, &carol.user_id).await?;
    let bob_since = next_batch(&bob.sync("timeout=0").await?);
    let carol_since = next_batch(&carol.sync("timeout=0").await?);
    let bob_pos = sliding(&bob, None, 0).await?["pos"]
        .as_str()
        .context("pos")?
        .to_owned();
    // bob is in the call
    let jwt = sfu_jwt(&bob, &room, "BDEV").await?;
    let mut participant = SfuClient::connect(&sfu_url, &jwt).await?;

    // hold the purge so that the departures can be read before the room goes
    set_failpoint(&owner, "purge.rooms", "pause").await?;
    let deleting = {
        let owner = owner.clone();
        let room = room.clone();
        tokio::spawn(async move { delete_room(&owner, &room).await })
    };
    let events = wait_sync_leave(&bob, &bob_since, &room).await?;
    assert!(
        events.iter().any(|e| e["state_key"] == bob.user_id.as_str()
            && e["content"]["membership"] == "leave"
            && e["sender"] == owner.user_id.as_str()),
        "bob is kicked by the owner: {events:?}"
    );
    wait_sliding_leave(&bob, &bob_pos, &room).await?;
    let events = wait_sync_leave(&carol, &carol_since, &room).await?;
    assert!(
        events
            .iter()
            .any(|e| e["state_key"] == carol.user_id.as_str()
                && e["content"]["membership"] == "leave"),
        "carol's invite is rescinded: {events:?}"
    );
    participant
        .wait_for("the SFU's leave", |e| {
            matches!(e, Event::Signal(proto::signal_response::Message::Leave(l))
                // Removed when the deletion's kick is processed, or when the room closes.
                if (l.reason == proto::DisconnectReason::RoomDeleted as i32
                    || l.reason == proto::DisconnectReason::ParticipantRemoved as i32)
                    && !l.can_reconnect)
        })
        .await?;
    remove_failpoint(&owner, "purge.rooms").await?;

    let answer = deleting.await??;
    assert_eq!(
        (answer.status, answer.body.clone()),
        (200, json!({})),
        "{}",
        answer.text
    );
    assert_eq!(room_keys(&owner, &room).await?["total"], 0);
    for who in [&owner, &bob, &carol] {
        room_is_gone(who, &room).await?;
    }
    owner
        .get(&format!("/directory/room/{}", enc("#standup:localhost")))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    let ss = sliding(&bob, None, 0).await?;
    assert!(ss["rooms"][&room].is_null(), "{ss}");
    Ok(())
}

#[tokio::test]
async fn the_owner_deletes_a_group() -> Result<()> {
    let server = TestServer::start().await?;
    let owner = server.register("owner").await?;
    let bob = server.register("bob").await?;
    let group = create_group(&owner, json!({})).await?;
    invite_and_join(&owner, &bob, &group).await?;
    let since = next_batch(&bob.sync("timeout=0").await?);
    delete_room(&owner, &group).await?.ok()?;
    // the leave reached bob's sync before the purge, unless the purge won: either way
    // the room is gone from his syncs and from storage
    let later = bob
        .sync(&format!("since={}&timeout=0", enc(&since)))
        .await?;
    assert!(later["rooms"]["join"][&group].is_null(), "{later}");
    wait_room_keys_gone(&owner, &group).await?;
    room_is_gone(&bob, &group).await?;
    Ok(())
}

#[tokio::test]
async fn delete_is_refused_to_a_moderator_a_member_in_conversations_and_unknown_rooms() -> Result<()>
{
    let server = TestServer::start().await?;
    let owner = server.register("owner").await?;
    let moderator = server.register("moderator").await?;
    let bob = server.register("bob").await?;
    let room = create_virtual_room(&owner, "Board", json!({})).await?;
    invite_and_join(&owner, &moderator, &room).await?;
    invite_and_join(&owner, &bob, &room).await?;
    set_level(&owner, &room, &moderator.user_id, 50)
        .await?
        .ok()?;
    let last = last_event(&owner, &room).await?;
    let keys = room_keys(&owner, &room).await?;

    let refused = delete_room(&moderator, &room).await?;
    forbidden(&refused, "Only the room's owner")?;
    let refused = delete_room(&bob, &room).await?;
    forbidden(&refused, "Only the room's owner")?;
    // nothing was written
    assert_eq!(last_event(&owner, &room).await?, last);
    assert_eq!(room_keys(&owner, &room).await?, keys);
    let joined = owner
        .get(&format!("/rooms/{}/joined_members", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(
        joined["joined"].as_object().map(|m| m.len()),
        Some(3),
        "{joined}"
    );

    let conversation = owner.create_room(json!({"preset": "private_chat"})).await?;
    let refused = delete_room(&owner, &conversation).await?;
    forbidden(&refused, "Only groups and virtual rooms can be deleted")?;
    owner
        .get(&format!("/rooms/{}/state", enc(&conversation)))
        .await?
        .ok()?;

    delete_room(&owner, &format!("!nope:{}", server.server_name))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}

#[tokio::test]
async fn an_admin_deletes_any_room_with_the_synapse_admin_api() -> Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "room_alias_name": "town"}))
        .await?;
    bob.join(&room).await?;
    let v1 = format!("/_synapse/admin/v1/rooms/{}", enc(&room));
    bob.request(Method::DELETE, &v1, Some(&json!({})))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    bob.get(&format!("/rooms/{}/state", enc(&room)))
        .await?
        .ok()?;

    let done = admin
        .request(Method::DELETE, &v1, Some(&json!({"purge": true})))
        .await?
        .ok()?;
    let mut kicked: Vec<&str> = done["kicked_users"]
        .as_array()
        .context("kicked_users")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    kicked.sort_unstable();
    assert_eq!(
        kicked,
        vec![alice.user_id.as_str(), bob.user_id.as_str()],
        "{done}"
    );
    assert_eq!(done["failed_to_kick_users"], json!([]), "{done}");
    assert_eq!(done["local_aliases"], json!(["#town:localhost"]), "{done}");
    assert_eq!(done["new_room_id"], Value::Null, "{done}");
    room_is_gone(&bob, &room).await?;
    room_is_gone(&alice, &room).await?;
    wait_room_keys_gone(&admin, &room).await?;

    // v2: a delete id whose status is complete
    let other = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&other).await?;
    let v2 = format!("/_synapse/admin/v2/rooms/{}", enc(&other));
    let started = admin
        .request(Method::DELETE, &v2, Some(&json!({"block": true})))
        .await?
        .ok()?;
    let id = started["delete_id"].as_str().context("delete_id")?;
    let status = admin
        .request(
            Method::GET,
            &format!("/_synapse/admin/v2/rooms/delete_status/{}", enc(id)),
            None,
        )
        .await?
        .ok()?;
    assert_eq!(status["status"], "complete", "{status}");
    let by_room = admin
        .request(
            Method::GET,
            &format!("/_synapse/admin/v2/rooms/{}/delete_status", enc(&other)),
            None,
        )
        .await?
        .ok()?;
    assert_eq!(by_room["results"][0]["delete_id"], id, "{by_room}");
    assert_eq!(by_room["results"][0]["status"], "complete", "{by_room}");
    room_is_gone(&bob, &other).await?;
    // blocked: the room id stays refused
    let block = admin
        .request(
            Method::GET,
            &format!("/_synapse/admin/v1/rooms/{}/block", enc(&other)),
            None,
        )
        .await?
        .ok()?;
    assert_eq!(block["block"], true, "{block}");
    admin
        .request(
            Method::DELETE,
            &format!("/_synapse/admin/v1/rooms/{}", enc("!nope:localhost")),
            Some(&json!({})),
        )
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}

#[tokio::test]
async fn a_kicked_member_leaves_the_call_and_their_old_token_is_refused() -> Result<()> {
    let (server, sfu_url) = TestServer::start_with_sfu(&[]).await?;
    let owner = server.register("owner").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = create_virtual_room(&owner, "Standup", json!({})).await?;
    invite_and_join(&owner, &bob, &room).await?;
    invite_and_join(&owner, &carol, &room).await?;
    let bob_jwt = sfu_jwt(&bob, &room, "BDEV").await?;
    let carol_jwt = sfu_jwt(&carol, &room, "CDEV").await?;
    let mut bob_call = SfuClient::connect(&sfu_url, &bob_jwt).await?;
    let mut carol_call = SfuClient::connect(&sfu_url, &carol_jwt).await?;

    owner
        .post(
            &format!("/rooms/{}/kick", enc(&room)),
            json!({"user_id": bob.user_id, "reason": "Off topic"}),
        )
        .await?
        .ok()?;
    bob_call
        .wait_for("the SFU's leave for bob", |e| {
            matches!(e, Event::Signal(proto::signal_response::Message::Leave(l))
                if l.reason == proto::DisconnectReason::ParticipantRemoved as i32
                    && !l.can_reconnect)
        })
        .await?;
    // Carol stays, and sees bob go.
    let bob_identity = format!("{}:BDEV", bob.user_id);
    carol_call
        .wait_for("carol to see bob leave", |e| {
            matches!(e, Event::Signal(proto::signal_response::Message::Update(u))
                if u.participants.iter().any(|p| p.identity == bob_identity
                    && p.state == proto::participant_info::State::Disconnected as i32))
        })
        .await?;
    // The token bob had is refused now; he cannot get a new one outside the room.
    let again = SfuClient::connect(&sfu_url, &bob_jwt).await;
    assert!(again.is_err(), "an old token still joins the call");
    assert!(sfu_jwt(&bob, &room, "BDEV").await.is_err());
    // Back in the room, a new token (issued after the removal) works.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    invite_and_join(&owner, &bob, &room).await?;
    let fresh = sfu_jwt(&bob, &room, "BDEV").await?;
    SfuClient::connect(&sfu_url, &fresh).await?.close().await;
    // The others' calls go on.
    SfuClient::connect(&sfu_url, &carol_jwt)
        .await?
        .close()
        .await;
    carol_call.close().await;
    Ok(())
}
