//! Push rules CRUD, notification counts and `/notifications`, and pushers delivering to an
//! HTTP push gateway.

use std::time::Duration;

use serde_json::{json, Value};
use spec_tests::{enc, TestServer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};

#[tokio::test]
async fn push_rules_crud() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let all = alice.get("/pushrules/").await?.ok()?;
    let overrides = all["global"]["override"].as_array().unwrap();
    assert!(
        overrides.iter().any(|r| r["rule_id"] == ".m.rule.master"),
        "{all}"
    );
    assert!(all["global"]["underride"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["rule_id"] == ".m.rule.message"));
    // the default ruleset arrives as m.push_rules account data in the initial sync
    let s = alice.sync("timeout=0").await?;
    let since = s["next_batch"].as_str().unwrap().to_string();
    let rules = s["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .cloned();
    assert!(
        rules.is_some_and(|r| r["content"]["global"]["override"].is_array()),
        "{s}"
    );

    // add a keyword rule, before nothing in particular
    alice
        .put(
            "/pushrules/global/content/cats",
            json!({"pattern": "cat*", "actions": ["notify", {"set_tweak": "highlight"}]}),
        )
        .await?
        .ok()?;
    let rule = alice.get("/pushrules/global/content/cats").await?.ok()?;
    assert_eq!(rule["pattern"], "cat*");
    assert_eq!(rule["enabled"], true);
    assert_eq!(rule["default"], false);
    alice
        .put(
            "/pushrules/global/content/cats/enabled",
            json!({"enabled": false}),
        )
        .await?
        .ok()?;
    assert_eq!(
        alice
            .get("/pushrules/global/content/cats/enabled")
            .await?
            .ok()?["enabled"],
        false
    );
    alice
        .put(
            "/pushrules/global/content/cats/actions",
            json!({"actions": ["notify"]}),
        )
        .await?
        .ok()?;
    assert_eq!(
        alice
            .get("/pushrules/global/content/cats/actions")
            .await?
            .ok()?["actions"],
        json!(["notify"])
    );
    // the change reaches sync as m.push_rules account data
    let s = alice.sync(&format!("since={since}&timeout=0")).await?;
    let rules = s["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .cloned()
        .expect("m.push_rules");
    assert!(rules["content"]["global"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["rule_id"] == "cats"));
    // and survives a restart
    let mut server = server;
    server.restart().await?;
    assert_eq!(
        alice
            .get("/pushrules/global/content/cats/actions")
            .await?
            .ok()?["actions"],
        json!(["notify"])
    );
    alice
        .delete("/pushrules/global/content/cats", None)
        .await?
        .ok()?;
    alice
        .get("/pushrules/global/content/cats")
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    alice
        .delete("/pushrules/global/content/nothing", None)
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    // server-default rules can be disabled but not deleted
    alice
        .put(
            "/pushrules/global/override/.m.rule.master/enabled",
            json!({"enabled": true}),
        )
        .await?
        .ok()?;
    let r = alice
        .delete("/pushrules/global/override/.m.rule.master", None)
        .await?;
    assert_eq!(r.status, 400, "{}", r.text);
    // pushrules cannot be written as raw account data
    let r = alice
        .put(
            &format!("/user/{}/account_data/m.push_rules", enc(&alice.user_id)),
            json!({}),
        )
        .await?;
    assert_eq!(r.errcode(), "M_BAD_JSON", "{}", r.text);
    Ok(())
}

#[tokio::test]
async fn notification_counts_highlights_and_list() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    // three people in the room, so one-to-one rules do not apply
    let carol = server.register("carol").await?;
    carol.join(&room).await?;
    alice.say(&room, "plain message").await?;
    let mention = alice
        .send(&room, "m.room.message", json!({"msgtype": "m.text", "body": "hey bob, look", "m.mentions": {"user_ids": [bob.user_id]}}))
        .await?;
    alice
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "@room everyone", "m.mentions": {"room": true}}),
        )
        .await?;
    let s = bob.sync("timeout=0").await?;
    let counts = &s["rooms"]["join"][&room]["unread_notifications"];
    assert_eq!(counts["notification_count"], 3, "{s}");
    assert_eq!(counts["highlight_count"], 2, "{s}");
    // alice's own messages do not count for her
    let s = alice.sync("timeout=0").await?;
    assert_eq!(
        s["rooms"]["join"][&room]["unread_notifications"]["notification_count"],
        0
    );

    let list = bob.get("/notifications").await?.ok()?;
    let items = list["notifications"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{list}");
    assert_eq!(items[0]["room_id"], room.as_str());
    assert_eq!(items[1]["event"]["event_id"], mention.as_str());
    assert_eq!(items[1]["read"], false);
    let highlights = bob.get("/notifications?only=highlight").await?.ok()?;
    assert_eq!(highlights["notifications"].as_array().unwrap().len(), 2);
    let page = bob.get("/notifications?limit=1").await?.ok()?;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 1);
    let next = page["next_token"].as_str().expect("next_token");
    let page2 = bob
        .get(&format!("/notifications?limit=5&from={next}"))
        .await?
        .ok()?;
    assert_eq!(page2["notifications"].as_array().unwrap().len(), 2);

    // a second room: the list merges rooms newest first, and pages across them
    let other = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&other).await?;
    carol.join(&other).await?;
    let latest = alice.say(&other, "elsewhere").await?;
    let list = bob.get("/notifications").await?.ok()?;
    let items = list["notifications"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{list}");
    assert_eq!(items[0]["room_id"], other.as_str());
    assert_eq!(items[0]["event"]["event_id"], latest.as_str());
    assert!(items[1..].iter().all(|i| i["room_id"] == room.as_str()));
    let first = bob.get("/notifications?limit=2").await?.ok()?;
    let next = first["next_token"].as_str().expect("next_token");
    let second = bob
        .get(&format!("/notifications?limit=2&from={next}"))
        .await?
        .ok()?;
    let ids = |page: &serde_json::Value| -> Vec<String> {
        page["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["event"]["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let paged: Vec<String> = ids(&first).into_iter().chain(ids(&second)).collect();
    assert_eq!(paged, ids(&list));
    assert!(
        second.get("next_token").is_none_or(|t| t.is_null()),
        "{second}"
    );

    // reading up to the mention leaves one unread
    bob.post(
        &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&mention)),
        json!({}),
    )
    .await?
    .ok()?;
    let s = bob.sync("timeout=0").await?;
    assert_eq!(
        s["rooms"]["join"][&room]["unread_notifications"]["notification_count"],
        1
    );
    assert_eq!(
        s["rooms"]["join"][&room]["unread_notifications"]["highlight_count"],
        1
    );
    let list = bob.get("/notifications").await?.ok()?;
    // newest first: the other room's message, "@room", then the mention (read)
    assert_eq!(list["notifications"][0]["read"], false);
    assert_eq!(list["notifications"][1]["read"], false);
    assert_eq!(list["notifications"][2]["read"], true);

    // a disabled rule stops notifications: mute the room for bob with a room rule
    bob.put(
        &format!("/pushrules/global/room/{}", enc(&room)),
        json!({"actions": []}),
    )
    .await?
    .ok()?;
    let last = alice.say(&room, "muted now").await?;
    bob.post(
        &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last)),
        json!({}),
    )
    .await?
    .ok()?;
    alice.say(&room, "still muted").await?;
    let s = bob.sync("timeout=0").await?;
    assert_eq!(
        s["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0,
        "{s}"
    );
    Ok(())
}

/// A one-connection-at-a-time HTTP server that hands each request body to the test.
async fn fake_gateway() -> anyhow::Result<(String, mpsc::UnboundedReceiver<Value>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/_matrix/push/v1/notify", listener.local_addr()?);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let Ok(n) = sock.read(&mut chunk).await else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(buf[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            if let Some(body) = body {
                let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
            }
            let reply = b"{\"rejected\":[]}";
            let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", reply.len());
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(reply).await;
        }
    });
    Ok((url, rx))
}

#[tokio::test]
async fn pushers_deliver_to_the_gateway() -> anyhow::Result<()> {
    // The fake gateway is on loopback, which push gateways may only use when allowed.
    let mut server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_PUSH_GATEWAY_ALLOW_CIDRS", "127.0.0.0/8"),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let (url, mut pushes) = fake_gateway().await?;
    // bad URLs are refused
    bob.post(
        "/pushers/set",
        json!({"kind": "http", "app_id": "org.example.app", "pushkey": "k1", "app_display_name": "App",
               "device_display_name": "Phone", "lang": "en", "data": {"url": "http://127.0.0.1:1/wrong"}}),
    )
    .await?
    .expect_error(400, "M_INVALID_PARAM")?;
    bob.post(
        "/pushers/set",
        json!({"kind": "http", "app_id": "org.example.app", "pushkey": "k1", "app_display_name": "App",
               "device_display_name": "Phone", "lang": "en", "data": {"url": url, "format": "event_id_only"}}),
    )
    .await?
    .ok()?;
    let listed = bob.get("/pushers").await?.ok()?;
    assert_eq!(listed["pushers"][0]["pushkey"], "k1");
    assert_eq!(listed["pushers"][0]["data"]["url"], url.as_str());

    let room = alice
        .create_room(
            json!({"preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": true}),
        )
        .await?;
    bob.join(&room).await?;
    let sent = alice.say(&room, "ping bob").await?;
    let mut got = None;
    // the invite notifies too; wait for the message's push
    for _ in 0..5 {
        let push = tokio::time::timeout(Duration::from_secs(10), pushes.recv())
            .await?
            .expect("a push");
        if push["notification"]["event_id"] == sent.as_str() {
            got = Some(push);
            break;
        }
    }
    let push = got.expect("push for the message");
    let n = &push["notification"];
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["devices"][0]["pushkey"], "k1");
    assert_eq!(n["devices"][0]["app_id"], "org.example.app");
    assert!(n["counts"]["unread"].as_u64().unwrap() >= 1);
    assert!(
        n.get("content").is_none(),
        "event_id_only must not carry content: {n}"
    );

    // the pusher outlives a restart
    server.restart().await?;
    let sent = alice.say(&room, "after restart").await?;
    let push = tokio::time::timeout(Duration::from_secs(10), pushes.recv())
        .await?
        .expect("a push after the restart");
    assert_eq!(push["notification"]["event_id"], sent.as_str());

    // deleting the pusher stops pushes
    bob.post(
        "/pushers/set",
        json!({"kind": null, "app_id": "org.example.app", "pushkey": "k1"}),
    )
    .await?
    .ok()?;
    assert_eq!(bob.get("/pushers").await?.ok()?["pushers"], json!([]));
    alice.say(&room, "no push").await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(700), pushes.recv())
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn display_name_mentions_follow_renames() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    carol.join(&room).await?;
    let highlights = |s: &serde_json::Value| {
        s["rooms"]["join"][&room]["unread_notifications"]["highlight_count"].clone()
    };
    let rename = |name: &'static str| {
        let path = format!("/profile/{}/displayname", enc(&carol.user_id));
        let carol = &carol;
        async move {
            carol
                .put(&path, json!({ "displayname": name }))
                .await?
                .ok()?;
            anyhow::Ok(())
        }
    };
    // The spec's default rules no longer match display names; carol adds a rule that
    // does (the condition still exists).
    carol
        .put(
            "/pushrules/global/override/my.name",
            json!({"conditions": [{"kind": "contains_display_name"}],
                   "actions": ["notify", {"set_tweak": "highlight"}]}),
        )
        .await?
        .ok()?;
    rename("Caroline").await?;
    alice.say(&room, "over to you, Caroline").await?;
    assert_eq!(highlights(&carol.sync("timeout=0").await?), 1);
    rename("Carrie").await?;
    alice.say(&room, "Caroline? anyone?").await?;
    assert_eq!(highlights(&carol.sync("timeout=0").await?), 1);
    alice.say(&room, "thanks Carrie").await?;
    assert_eq!(highlights(&carol.sync("timeout=0").await?), 2);
    // Bob's name is not in any of them.
    assert_eq!(highlights(&bob.sync("timeout=0").await?), 0);
    Ok(())
}
