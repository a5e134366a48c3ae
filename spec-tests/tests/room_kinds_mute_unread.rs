//! Text mute for all (`PUT …/io.myelin/rooms/{roomId}/text_mute`), unread totals per kind
//! (`GET …/io.myelin/unread`) and sliding sync's `room_types` filter with the Myelin types.

mod kinds_common;

use kinds_common::*;
use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, invite_and_join, TestServer};

#[tokio::test]
async fn text_mute_silences_members_until_unmuted() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = create_virtual_room(&alice, "Town hall", json!({})).await?;
    invite_and_join(&alice, &bob, &room).await?;
    invite_and_join(&alice, &carol, &room).await?;
    set_level(&alice, &room, &carol.user_id, 50).await?.ok()?;

    // a member may not mute; a moderator may
    forbidden(&text_mute(&bob, &room, true).await?, "Only moderators")?;
    let before = power_levels(&alice, &room).await?;
    assert_eq!(
        text_mute(&carol, &room, true).await?.ok()?,
        json!({"muted": true})
    );
    let muted = power_levels(&bob, &room).await?;
    let mut expected = before.clone();
    expected["events_default"] = json!(50);
    assert_eq!(muted, expected, "only events_default changed");
    // the change is carol's, as Element shows it
    let state = bob
        .get(&format!("/rooms/{}/state", enc(&room)))
        .await?
        .ok()?;
    let event = state
        .as_array()
        .and_then(|s| s.iter().find(|e| e["type"] == "m.room.power_levels"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(event["sender"], carol.user_id.as_str(), "{event}");

    // bob is refused; moderators and the owner still talk
    forbidden(
        &say_response(&bob, &room, "can I speak?").await?,
        "muted messages in this room",
    )?;
    carol.say(&room, "questions at the end").await?;
    alice.say(&room, "agreed").await?;
    // muting again changes nothing
    text_mute(&carol, &room, true).await?.ok()?;
    state_is(&alice, &room, "m.room.power_levels", "", &muted).await?;

    // unmute restores bob's voice
    assert_eq!(
        text_mute(&alice, &room, false).await?.ok()?,
        json!({"muted": false})
    );
    state_is(&alice, &room, "m.room.power_levels", "", &before).await?;
    bob.say(&room, "thanks").await?;
    Ok(())
}

#[tokio::test]
async fn only_the_endpoint_changes_events_default() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = create_virtual_room(&alice, "Town hall", json!({})).await?;
    invite_and_join(&alice, &bob, &room).await?;
    // the owner's own PUT of exactly what text mute would send is refused
    let mut pl = power_levels(&alice, &room).await?;
    pl["events_default"] = json!(50);
    forbidden(
        &alice
            .set_state(&room, "m.room.power_levels", "", pl)
            .await?,
        "use text mute",
    )?;
    bob.say(&room, "still here").await?;

    // groups: the owner mutes, members may not
    let group = create_group(&alice, json!({})).await?;
    invite_and_join(&alice, &bob, &group).await?;
    forbidden(&text_mute(&bob, &group, true).await?, "Only moderators")?;
    text_mute(&alice, &group, true).await?.ok()?;
    say_response(&bob, &group, "hello?")
        .await?
        .expect_error(403, "M_FORBIDDEN")?;

    // not in conversations, not for non-members, not in unknown rooms; a body is needed
    let conversation = alice.create_room(json!({})).await?;
    forbidden(
        &text_mute(&alice, &conversation, true).await?,
        "conversation",
    )?;
    let carol = server.register("carol").await?;
    forbidden(&text_mute(&carol, &room, true).await?, "not joined")?;
    text_mute(&alice, &format!("!nope:{}", server.server_name), true)
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    alice
        .request(
            Method::PUT,
            &myelin(&format!("/rooms/{}/text_mute", enc(&room))),
            Some(&json!({"muted": "yes"})),
        )
        .await?
        .expect_error(400, "M_BAD_JSON")?;
    alice
        .request_raw(
            Method::PUT,
            &myelin(&format!("/rooms/{}/text_mute", enc(&room))),
            b"{not json".to_vec(),
        )
        .await?
        .expect_error(400, "M_NOT_JSON")?;
    Ok(())
}

#[tokio::test]
async fn unread_totals_per_kind_match_sync() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let conversation = alice.create_room(json!({})).await?;
    let other = alice.create_room(json!({})).await?;
    let group = create_group(&alice, json!({})).await?;
    let virtual_room = create_virtual_room(&alice, "Town hall", json!({})).await?;
    for room in [&conversation, &other, &group, &virtual_room] {
        invite_and_join(&alice, &bob, room).await?;
    }
    // bob's own invites notified him: the totals are /sync's, room by room
    let sync = bob.sync("timeout=0").await?;
    let mut notifying = 0;
    for room in [&conversation, &other, &group, &virtual_room] {
        notifying += sync["rooms"]["join"][room]["unread_notifications"]["notification_count"]
            .as_u64()
            .unwrap_or(0);
    }
    let totals = unread(&bob).await?;
    let sum = |key: &str| -> u64 {
        ["conversations", "groups", "virtual_rooms"]
            .iter()
            .map(|kind| totals[kind][key].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(sum("notifications"), notifying, "{totals} vs {sync}");
    // then he reads everything
    for room in [&conversation, &other, &group, &virtual_room] {
        let last = spec_tests::timeline(&sync, room)
            .last()
            .and_then(|e| e["event_id"].as_str())
            .unwrap_or_default()
            .to_owned();
        bob.post(
            &format!("/rooms/{}/receipt/m.read/{}", enc(room), enc(&last)),
            json!({}),
        )
        .await?
        .ok()?;
    }
    let none = json!({"rooms": 0, "notifications": 0, "highlights": 0});
    assert_eq!(
        unread(&bob).await?,
        json!({"conversations": none, "groups": none, "virtual_rooms": none})
    );

    alice.say(&conversation, "one").await?;
    alice.say(&conversation, "two").await?;
    alice.say(&other, "three").await?;
    alice
        .send(
            &group,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "bob, lunch?",
                   "m.mentions": {"user_ids": [bob.user_id]}}),
        )
        .await?;
    let totals = unread(&bob).await?;
    assert_eq!(
        totals,
        json!({
            "conversations": {"rooms": 2, "notifications": 3, "highlights": 0},
            "groups": {"rooms": 1, "notifications": 1, "highlights": 1},
            "virtual_rooms": none,
        })
    );
    // the same counts as /sync
    let sync = bob.sync("timeout=0").await?;
    let count =
        |room: &str, key: &str| sync["rooms"]["join"][room]["unread_notifications"][key].as_u64();
    assert_eq!(
        count(&conversation, "notification_count"),
        Some(2),
        "{sync}"
    );
    assert_eq!(count(&group, "highlight_count"), Some(1), "{sync}");

    // reading the group clears its totals
    let last = alice.say(&group, "at noon").await?;
    bob.post(
        &format!("/rooms/{}/receipt/m.read/{}", enc(&group), enc(&last)),
        json!({}),
    )
    .await?
    .ok()?;
    assert_eq!(unread(&bob).await?["groups"], none);
    // and it needs a session
    let anonymous = server.client();
    let resp = anonymous
        .request(Method::GET, &myelin("/unread"), None)
        .await?;
    assert_eq!(resp.status, 401, "{}", resp.text);
    Ok(())
}

#[tokio::test]
async fn sliding_sync_filters_the_myelin_room_types() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let conversation = alice.create_room(json!({"name": "chat"})).await?;
    let group = create_group(&alice, json!({"name": "group"})).await?;
    let virtual_room = create_virtual_room(&alice, "Town hall", json!({})).await?;

    let ids = |filters: Value| {
        let alice = alice.clone();
        async move {
            let body = json!({"lists": {"l": {"ranges": [[0, 20]], "timeline_limit": 0,
                                             "filters": filters}}});
            let resp = alice
                .request(
                    Method::POST,
                    "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0",
                    Some(&body),
                )
                .await?
                .ok()?;
            let mut ids: Vec<String> = resp["rooms"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            ids.sort();
            ids.dedup();
            anyhow::Ok(ids)
        }
    };
    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<_>>()
    };
    assert_eq!(
        ids(json!({"room_types": [GROUP]})).await?,
        vec![group.clone()]
    );
    assert_eq!(
        ids(json!({"room_types": [VIRTUAL_ROOM]})).await?,
        vec![virtual_room.clone()]
    );
    assert_eq!(
        ids(json!({"room_types": [GROUP, VIRTUAL_ROOM]})).await?,
        sorted(vec![&group, &virtual_room])
    );
    assert_eq!(
        ids(json!({"room_types": [null]})).await?,
        vec![conversation.clone()]
    );
    assert_eq!(
        ids(json!({"not_room_types": [GROUP, VIRTUAL_ROOM]})).await?,
        vec![conversation.clone()]
    );
    Ok(())
}
