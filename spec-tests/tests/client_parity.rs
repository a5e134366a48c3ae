//! Element and Element X parity: what their SDK's suite relies on beyond the basics —
//! `unsigned.membership` on every read path (MSC4115), `/context`'s limit split and
//! tokens, the public directory following alias removal, and push-rule changes echoing
//! through sliding sync.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, invite_and_join, Client, TestServer};

const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn sliding(
    c: &Client,
    pos: Option<&str>,
    timeout: u64,
    body: &Value,
) -> anyhow::Result<Value> {
    let mut path = format!("{SLIDING}?timeout={timeout}");
    if let Some(p) = pos {
        path.push_str(&format!("&pos={}", enc(p)));
    }
    c.request(Method::POST, &path, Some(body)).await?.ok()
}

fn body_of(e: &Value) -> Option<&str> {
    e["content"]["body"].as_str()
}

/// `unsigned.membership` of the event with `body` (or of `kind` events of `state_key`).
fn membership_of<'a>(events: &'a [Value], body: &str) -> &'a Value {
    let e = events
        .iter()
        .find(|e| body_of(e) == Some(body))
        .unwrap_or_else(|| panic!("no event {body:?} in {events:?}"));
    &e["unsigned"]["membership"]
}

#[tokio::test]
async fn unsigned_membership_on_every_read_path() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "History"}))
        .await?;
    let before = alice.say(&room, "before").await?;
    alice.invite(&room, &bob.user_id).await?;
    let during_invite = alice.say(&room, "while invited").await?;
    bob.join(&room).await?;
    let after = alice.say(&room, "after").await?;
    let r = enc(&room);

    // /messages: the membership at each event, the event's own change included.
    let page = bob
        .get(&format!("/rooms/{r}/messages?dir=b&limit=50"))
        .await?
        .ok()?;
    let chunk = page["chunk"].as_array().unwrap().clone();
    assert_eq!(membership_of(&chunk, "before"), "leave", "{page}");
    assert_eq!(membership_of(&chunk, "while invited"), "invite");
    assert_eq!(membership_of(&chunk, "after"), "join");
    let own = |kind: &str, m: &str| {
        chunk.iter().any(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id.as_str()
                && e["content"]["membership"] == kind
                && e["unsigned"]["membership"] == m
        })
    };
    assert!(own("invite", "invite") && own("join", "join"), "{page}");
    // The sender sees their own membership.
    let page = alice
        .get(&format!("/rooms/{r}/messages?dir=b&limit=50"))
        .await?
        .ok()?;
    assert_eq!(
        membership_of(page["chunk"].as_array().unwrap(), "before"),
        "join"
    );

    // /event
    for (id, want) in [
        (&before, "leave"),
        (&during_invite, "invite"),
        (&after, "join"),
    ] {
        let e = bob
            .get(&format!("/rooms/{r}/event/{}", enc(id)))
            .await?
            .ok()?;
        assert_eq!(e["unsigned"]["membership"], want, "{e}");
    }

    // /context: the target and the events on both sides.
    let ctx = bob
        .get(&format!(
            "/rooms/{r}/context/{}?limit=10",
            enc(&during_invite)
        ))
        .await?
        .ok()?;
    assert_eq!(ctx["event"]["unsigned"]["membership"], "invite", "{ctx}");
    assert_eq!(
        membership_of(ctx["events_before"].as_array().unwrap(), "before"),
        "leave"
    );
    assert_eq!(
        membership_of(ctx["events_after"].as_array().unwrap(), "after"),
        "join"
    );

    // /sync
    let filter = enc(&json!({"room": {"timeline": {"limit": 50}}}).to_string());
    let sync = bob.sync(&format!("filter={filter}")).await?;
    let events = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no timeline in {sync}"))
        .clone();
    assert_eq!(membership_of(&events, "before"), "leave", "{sync}");
    assert_eq!(membership_of(&events, "while invited"), "invite");
    assert_eq!(membership_of(&events, "after"), "join");

    // sliding sync
    let ss = sliding(
        &bob,
        None,
        0,
        &json!({"lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 50}}}),
    )
    .await?;
    let events = ss["rooms"][&room]["timeline"]
        .as_array()
        .unwrap_or_else(|| panic!("no timeline in {ss}"))
        .clone();
    assert_eq!(membership_of(&events, "before"), "leave", "{ss}");
    assert_eq!(membership_of(&events, "while invited"), "invite");
    assert_eq!(membership_of(&events, "after"), "join");
    Ok(())
}

#[tokio::test]
async fn context_splits_the_limit_like_synapse_and_tokens_continue_it() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = alice.create_room(json!({"name": "Ten"})).await?;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(alice.say(&room, &format!("m{i}")).await?);
    }
    let r = enc(&room);
    let bodies = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|e| body_of(e).map(str::to_owned))
            .collect()
    };
    for (limit, before, after) in [
        (3, vec!["m4"], vec!["m6", "m7"]),
        (4, vec!["m4", "m3"], vec!["m6", "m7"]),
        (1, vec![], vec!["m6"]),
        (0, vec![], vec![]),
    ] {
        let ctx = alice
            .get(&format!(
                "/rooms/{r}/context/{}?limit={limit}",
                enc(&ids[5])
            ))
            .await?
            .ok()?;
        assert_eq!(body_of(&ctx["event"]), Some("m5"));
        assert_eq!(
            bodies(&ctx["events_before"]),
            before,
            "limit {limit}: {ctx}"
        );
        assert_eq!(bodies(&ctx["events_after"]), after, "limit {limit}: {ctx}");
        // The tokens continue exactly where the window stops, both ways.
        let start = ctx["start"].as_str().expect("start token");
        let end = ctx["end"].as_str().expect("end token");
        let older = alice
            .get(&format!(
                "/rooms/{r}/messages?dir=b&limit=1&from={}&filter={}",
                enc(start),
                enc(r#"{"types":["m.room.message"]}"#)
            ))
            .await?
            .ok()?;
        let oldest_shown = before.last().copied().unwrap_or("m5");
        let n: usize = oldest_shown[1..].parse()?;
        assert_eq!(
            bodies(&older["chunk"]),
            [format!("m{}", n - 1)],
            "limit {limit}: back from start"
        );
        let newer = alice
            .get(&format!(
                "/rooms/{r}/messages?dir=f&limit=1&from={}",
                enc(end)
            ))
            .await?
            .ok()?;
        let newest_shown = after.last().copied().unwrap_or("m5");
        let n: usize = newest_shown[1..].parse()?;
        assert_eq!(
            bodies(&newer["chunk"]),
            [format!("m{}", n + 1)],
            "limit {limit}: forward from end"
        );
    }
    Ok(())
}

async fn search(c: &Client, term: &str) -> anyhow::Result<Vec<Value>> {
    let res = c
        .post(
            "/publicRooms",
            json!({"filter": {"generic_search_term": term}}),
        )
        .await?
        .ok()?;
    Ok(res["chunk"].as_array().cloned().unwrap_or_default())
}

#[tokio::test]
async fn directory_follows_alias_removal_and_visibility_at_once() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({
            "preset": "public_chat", "name": "Plain", "room_alias_name": "zebracorn",
            "visibility": "public",
        }))
        .await?;
    let alias = server.user_id("zebracorn").replacen('@', "#", 1);
    let alt = server.user_id("zebracorn-alt").replacen('@', "#", 1);
    alice
        .put(
            &format!("/directory/room/{}", enc(&alt)),
            json!({"room_id": room}),
        )
        .await?
        .ok()?;
    alice
        .set_state(
            &room,
            "m.room.canonical_alias",
            "",
            json!({"alias": alias, "alt_aliases": [alt]}),
        )
        .await?
        .ok()?;
    let found = search(&bob, "zebracorn").await?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["canonical_alias"], alias.as_str());

    // Removing the alias from the directory takes it out of the canonical alias too.
    alice
        .delete(&format!("/directory/room/{}", enc(&alias)), None)
        .await?
        .ok()?;
    let canonical = alice
        .get(&format!(
            "/rooms/{}/state/m.room.canonical_alias/",
            enc(&room)
        ))
        .await?
        .ok()?;
    assert!(canonical.get("alias").is_none(), "{canonical}");
    assert_eq!(canonical["alt_aliases"], json!([alt]));
    let listed = bob.get("/publicRooms").await?.ok()?;
    let entry = &listed["chunk"][0];
    assert_eq!(entry["room_id"], room.as_str());
    assert!(entry.get("canonical_alias").is_none(), "{listed}");
    assert!(search(&bob, "zebracorn:").await?.is_empty());
    // An alt alias removed: gone from the state as well.
    alice
        .delete(&format!("/directory/room/{}", enc(&alt)), None)
        .await?
        .ok()?;
    let canonical = alice
        .get(&format!(
            "/rooms/{}/state/m.room.canonical_alias/",
            enc(&room)
        ))
        .await?
        .ok()?;
    assert_eq!(canonical["alt_aliases"], json!([]), "{canonical}");
    assert!(search(&bob, "zebracorn").await?.is_empty());

    // A canonical alias set again is searchable again; a private room is gone at once.
    alice
        .put(
            &format!("/directory/room/{}", enc(&alias)),
            json!({"room_id": room}),
        )
        .await?
        .ok()?;
    alice
        .set_state(&room, "m.room.canonical_alias", "", json!({"alias": alias}))
        .await?
        .ok()?;
    assert_eq!(search(&bob, "zebracorn").await?.len(), 1);
    alice
        .put(
            &format!("/directory/list/room/{}", enc(&room)),
            json!({"visibility": "private"}),
        )
        .await?
        .ok()?;
    assert!(search(&bob, "zebracorn").await?.is_empty());
    assert_eq!(bob.get("/publicRooms").await?.ok()?["chunk"], json!([]));
    // Someone without the power to change the canonical alias may not remove it.
    alice
        .put(
            &format!("/directory/list/room/{}", enc(&room)),
            json!({"visibility": "public"}),
        )
        .await?
        .ok()?;
    bob.join(&room).await?;
    bob.delete(&format!("/directory/room/{}", enc(&alias)), None)
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    assert_eq!(search(&bob, "zebracorn").await?.len(), 1);
    Ok(())
}

fn room_rule_actions(rules: &Value, room: &str) -> Option<Value> {
    rules["global"]["room"]
        .as_array()?
        .iter()
        .find(|r| r["rule_id"] == room)
        .map(|r| r["actions"].clone())
}

fn global_push_rules(response: &Value) -> Option<&Value> {
    response["extensions"]["account_data"]["global"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .map(|e| &e["content"])
}

#[tokio::test]
async fn push_rule_changes_echo_through_sliding_sync_and_counts_follow() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let muted = alice.create_room(json!({"name": "Muted"})).await?;
    let loud = alice.create_room(json!({"name": "Loud"})).await?;
    invite_and_join(&alice, &bob, &muted).await?;
    invite_and_join(&alice, &bob, &loud).await?;
    let body = json!({
        "lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 1}},
        "extensions": {"account_data": {"enabled": true}},
    });
    let first = sliding(&alice, None, 0, &body).await?;
    let pos = first["pos"].as_str().unwrap().to_owned();
    let sync = alice.sync("timeout=0").await?;
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // A long-poll parked with nothing new is answered by the notification settings
    // change (not by its timeout, a minute away).
    let waiter = {
        let (alice, body, pos) = (alice.clone(), body.clone(), pos.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let r = sliding(&alice, Some(&pos), 60_000, &body).await;
            (started.elapsed(), r)
        })
    };
    server.wait_parked(&alice.user_id, 1).await?;
    alice
        .put(
            &format!("/pushrules/global/room/{}", enc(&muted)),
            json!({"actions": []}),
        )
        .await?
        .ok()?;
    let (elapsed, next) = waiter.await?;
    let next = next?;
    assert!(
        elapsed < Duration::from_secs(30),
        "answered only at its timeout"
    );
    let rules = global_push_rules(&next).unwrap_or_else(|| panic!("no m.push_rules in {next}"));
    assert_eq!(room_rule_actions(rules, &muted), Some(json!([])), "{next}");
    let pos = next["pos"].as_str().unwrap().to_owned();

    // /sync carries it too.
    let sync = alice
        .sync(&format!("since={}&timeout=0", enc(&since)))
        .await?;
    let rules = sync["account_data"]["events"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["type"] == "m.push_rules"))
        .unwrap_or_else(|| panic!("no m.push_rules in {sync}"));
    assert_eq!(
        room_rule_actions(&rules["content"], &muted),
        Some(json!([]))
    );

    // The counts follow the new rule: the muted room's message does not notify.
    bob.say(&muted, "quiet").await?;
    bob.say(&loud, "noisy").await?;
    let next = sliding(&alice, Some(&pos), 0, &body).await?;
    let count = |r: &str| -> u64 {
        let room = &next["rooms"][r];
        room["notification_count"].as_u64().unwrap_or(0)
    };
    assert_eq!(count(&loud), 1, "{next}");
    assert_eq!(count(&muted), 0, "{next}");

    // Deleting the rule echoes as well, and the room notifies again.
    alice
        .delete(&format!("/pushrules/global/room/{}", enc(&muted)), None)
        .await?
        .ok()?;
    let pos = next["pos"].as_str().unwrap().to_owned();
    let next = sliding(&alice, Some(&pos), 10_000, &body).await?;
    let rules = global_push_rules(&next).unwrap_or_else(|| panic!("no m.push_rules in {next}"));
    assert_eq!(room_rule_actions(rules, &muted), None, "{next}");
    bob.say(&muted, "heard").await?;
    let pos = next["pos"].as_str().unwrap().to_owned();
    let next = sliding(&alice, Some(&pos), 10_000, &body).await?;
    assert_eq!(next["rooms"][&muted]["notification_count"], 1, "{next}");
    Ok(())
}

async fn relations(c: &Client, room: &str, path: &str) -> anyhow::Result<Value> {
    c.request(
        Method::GET,
        &format!("/_matrix/client/v1/rooms/{}/relations/{path}", enc(room)),
        None,
    )
    .await?
    .ok()
}

fn chunk_bodies(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            body_of(e)
                .or(e["content"]["m.relates_to"]["key"].as_str())
                .unwrap_or("?")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn relations_page_threads_edits_and_reactions_as_the_reader_may_see_them(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "Threads"}))
        .await?;
    let root = alice.say(&room, "root").await?;
    let thread = |body: &str| {
        json!({"msgtype": "m.text", "body": body,
            "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    };
    alice.send(&room, "m.room.message", thread("t1")).await?;
    invite_and_join(&alice, &bob, &room).await?;
    alice.send(&room, "m.room.message", thread("t2")).await?;
    alice.say(&room, "unrelated").await?;
    alice
        .send(
            &room,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}}),
        )
        .await?;
    // An encrypted reply: its relation stays in the clear.
    alice
        .send(
            &room,
            "m.room.encrypted",
            json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA", "body": "t3-encrypted",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await?;
    alice.send(&room, "m.room.message", thread("t4")).await?;
    let root_enc = enc(&root);

    let all = relations(&bob, &room, &format!("{root_enc}?limit=50")).await?;
    assert_eq!(
        chunk_bodies(&all),
        ["t4", "t3-encrypted", "👍", "t2", "t1"],
        "{all}"
    );
    assert!(all.get("next_batch").is_none(), "{all}");
    // unsigned.membership: Bob was not in the room for the first reply.
    let chunk = all["chunk"].as_array().unwrap();
    assert_eq!(membership_of(chunk, "t1"), "leave");
    assert_eq!(membership_of(chunk, "t4"), "join");

    let threads = relations(&bob, &room, &format!("{root_enc}/m.thread?limit=50")).await?;
    assert_eq!(chunk_bodies(&threads), ["t4", "t3-encrypted", "t2", "t1"]);
    let messages = relations(
        &bob,
        &room,
        &format!("{root_enc}/m.thread/m.room.message?limit=50"),
    )
    .await?;
    assert_eq!(chunk_bodies(&messages), ["t4", "t2", "t1"]);
    let forwards = relations(&bob, &room, &format!("{root_enc}/m.thread?dir=f&limit=50")).await?;
    assert_eq!(chunk_bodies(&forwards), ["t1", "t2", "t3-encrypted", "t4"]);

    // Pages of two follow one another without gaps or repeats.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..5 {
        let mut path = format!("{root_enc}/m.thread?limit=2");
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let page = relations(&bob, &room, &path).await?;
        seen.extend(chunk_bodies(&page));
        match page["next_batch"].as_str() {
            Some(next) => from = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["t4", "t3-encrypted", "t2", "t1"]);

    // Not for someone outside the room; an unknown event is 404.
    let r = carol
        .request(
            Method::GET,
            &format!(
                "/_matrix/client/v1/rooms/{}/relations/{root_enc}",
                enc(&room)
            ),
            None,
        )
        .await?;
    r.expect_error(403, "M_FORBIDDEN")?;
    bob.request(
        Method::GET,
        &format!(
            "/_matrix/client/v1/rooms/{}/relations/{}",
            enc(&room),
            enc("$nope")
        ),
        None,
    )
    .await?
    .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}
