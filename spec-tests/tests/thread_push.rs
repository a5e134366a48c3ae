//! MSC4306's push rules for threads (`postcontent` kind): a reply in a thread the user is
//! not subscribed to does not notify them (unless it mentions them), one in a thread they
//! are subscribed to does, even in a room they muted; both rules can be switched off like
//! other server-default rules, and clients cannot add rules of that kind.

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, Client, TestServer};

const UNSUBSCRIBED: &str = ".io.element.msc4306.rule.unsubscribed_thread";
const SUBSCRIBED: &str = ".io.element.msc4306.rule.subscribed_thread";

async fn reply(c: &Client, room: &str, root: &str, content: Value) -> anyhow::Result<String> {
    let mut content = content;
    content["msgtype"] = json!("m.text");
    content["m.relates_to"] = json!({"rel_type": "m.thread", "event_id": root});
    c.send(room, "m.room.message", content).await
}

async fn subscribe(c: &Client, room: &str, root: &str) -> anyhow::Result<()> {
    let path = format!(
        "/_matrix/client/unstable/io.element.msc4306/rooms/{}/thread/{}/subscription",
        enc(room),
        enc(root)
    );
    c.request(Method::PUT, &path, Some(&json!({})))
        .await?
        .ok()?;
    Ok(())
}

/// The event ids of the user's notifications, newest first.
async fn notified(c: &Client) -> anyhow::Result<Vec<String>> {
    let list = c.get("/notifications").await?.ok()?;
    Ok(list["notifications"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|n| n["event"]["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

async fn notification_count(c: &Client, room: &str) -> anyhow::Result<u64> {
    let s = c.sync("timeout=0").await?;
    Ok(
        s["rooms"]["join"][room]["unread_notifications"]["notification_count"]
            .as_u64()
            .unwrap_or(0),
    )
}

async fn set_enabled(c: &Client, kind: &str, rule: &str, enabled: bool) -> anyhow::Result<()> {
    c.put(
        &format!("/pushrules/global/{kind}/{}/enabled", enc(rule)),
        json!({ "enabled": enabled }),
    )
    .await?
    .ok()?;
    Ok(())
}

#[tokio::test]
async fn thread_replies_notify_subscribers_only() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    carol.join(&room).await?;

    // The rules are served in the `postcontent` kind, under both names of it.
    let all = bob.get("/pushrules/").await?.ok()?;
    let post = all["global"]["postcontent"]
        .as_array()
        .expect("postcontent");
    let ids: Vec<&str> = post.iter().filter_map(|r| r["rule_id"].as_str()).collect();
    assert_eq!(ids, [UNSUBSCRIBED, SUBSCRIBED], "{all}");
    assert_eq!(
        post[0]["conditions"],
        json!([{"kind": "io.element.msc4306.thread_subscription", "subscribed": false}])
    );
    assert_eq!(post[0]["actions"], json!([]));
    assert_eq!(post[1]["default"], true);
    for kind in ["postcontent", "io.element.msc4306.postcontent"] {
        let rule = bob
            .get(&format!("/pushrules/global/{kind}/{}", enc(SUBSCRIBED)))
            .await?;
        let rule = rule.ok()?;
        assert_eq!(rule["enabled"], true, "{kind}: {rule}");
        // Clients may not add rules of this kind.
        let refused = bob
            .put(
                &format!("/pushrules/global/{kind}/mine"),
                json!({"conditions": [], "actions": ["notify"]}),
            )
            .await?;
        assert_eq!(refused.status, 400, "{kind}: {}", refused.text);
        assert_eq!(refused.body["errcode"], "M_INVALID_PARAM", "{kind}");
    }

    let root = alice.say(&room, "Lunch plans?").await?;
    subscribe(&bob, &room, &root).await?;
    let first = reply(&alice, &room, &root, json!({"body": "Pizza"})).await?;
    // Bob is subscribed: the reply notifies him. Carol is not: only the root does.
    assert_eq!(notified(&bob).await?, [first.clone(), root.clone()]);
    assert_eq!(notified(&carol).await?, [root.as_str()]);
    assert_eq!(notification_count(&bob, &room).await?, 2);
    assert_eq!(notification_count(&carol, &room).await?, 1);

    // A mention still notifies an unsubscribed member (and highlights).
    let mention = reply(
        &alice,
        &room,
        &root,
        json!({"body": "carol?", "m.mentions": {"user_ids": [carol.user_id]}}),
    )
    .await?;
    assert_eq!(notified(&carol).await?, [mention.clone(), root.clone()]);
    let highlights = carol.get("/notifications?only=highlight").await?.ok()?;
    assert_eq!(highlights["notifications"][0]["event"]["event_id"], mention);

    // Carol turns the unsubscribed-thread rule off: replies notify her as messages again.
    set_enabled(&carol, "postcontent", UNSUBSCRIBED, false).await?;
    let rules = carol.get("/pushrules/global/").await?.ok()?;
    assert_eq!(rules["postcontent"][0]["enabled"], false, "{rules}");
    let second = reply(&alice, &room, &root, json!({"body": "Or sushi"})).await?;
    assert_eq!(notified(&carol).await?[0], second);

    // Bob mutes the room: ordinary messages stop notifying him, replies in his thread do
    // not, until he switches the subscribed-thread rule off.
    bob.put(
        &format!("/pushrules/global/room/{}", enc(&room)),
        json!({"actions": []}),
    )
    .await?
    .ok()?;
    let plain = alice.say(&room, "Anyone?").await?;
    let third = reply(&alice, &room, &root, json!({"body": "Sushi it is"})).await?;
    let bob_list = notified(&bob).await?;
    assert_eq!(bob_list[0], third);
    assert!(!bob_list.contains(&plain), "{bob_list:?}");
    set_enabled(&bob, "io.element.msc4306.postcontent", SUBSCRIBED, false).await?;
    let fourth = reply(&alice, &room, &root, json!({"body": "At noon"})).await?;
    assert_eq!(notified(&bob).await?[0], third, "muted room, rule off");
    assert!(!notified(&bob).await?.contains(&fourth));
    Ok(())
}
