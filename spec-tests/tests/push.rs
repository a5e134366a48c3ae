//! Push rules CRUD, notification counts and `/notifications`, and pushers delivering to an
//! HTTP push gateway: removed when the gateway rejects their pushkey, retried with backoff
//! when it fails.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use spec_tests::{enc, next_batch, Client, TestServer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
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
    let since = next_batch(&s);
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

/// How the fake gateway answers one request.
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// 200 with nothing rejected.
    Accept,
    /// 200 rejecting the pushkeys of the request (the server must remove those pushers).
    Reject,
    /// 500 (the server must retry).
    Fail,
}

/// One request the gateway received: its JSON body and when it arrived.
struct Push {
    body: Value,
    at: Instant,
}

/// A strict push gateway on a loopback port: each request must carry a complete JSON body
/// with a content-length (else it answers 400 and the test fails on the next `recv`);
/// requests are answered concurrently, in the order of `script`, then with `Accept`.
struct Gateway {
    url: String,
    pushes: mpsc::UnboundedReceiver<Result<Push, String>>,
}

impl Gateway {
    async fn start(script: &[Reply]) -> anyhow::Result<Gateway> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/_matrix/push/v1/notify", listener.local_addr()?);
        let (tx, pushes) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (tx, script) = (tx.clone(), script.clone());
                tokio::spawn(async move {
                    let _ = answer(sock, &tx, &script).await;
                });
            }
        });
        Ok(Gateway { url, pushes })
    }

    /// The next request, failing the test on a timeout or an unreadable request.
    async fn recv(&mut self) -> Push {
        match tokio::time::timeout(Duration::from_secs(20), self.pushes.recv()).await {
            Ok(Some(Ok(push))) => push,
            Ok(Some(Err(e))) => panic!("the gateway got a bad request: {e}"),
            Ok(None) => panic!("the gateway stopped"),
            Err(_) => panic!("no push within 20 s"),
        }
    }

    /// Requests until one notifies of `event_id` (deliveries are concurrent: others, e.g.
    /// of an invite, may come before or after it); returns it and those that came first.
    async fn recv_event(&mut self, event_id: &str) -> (Push, Vec<Push>) {
        let mut before = Vec::new();
        loop {
            let push = self.recv().await;
            if push.body["notification"]["event_id"] == event_id {
                return (push, before);
            }
            before.push(push);
        }
    }
}

/// Reads one request from `sock`, reports it and answers as the script says.
async fn answer(
    mut sock: TcpStream,
    tx: &mpsc::UnboundedSender<Result<Push, String>>,
    script: &Mutex<VecDeque<Reply>>,
) -> std::io::Result<()> {
    let body = match read_request(&mut sock).await {
        Ok(body) => body,
        Err(e) => {
            let _ = tx.send(Err(e));
            return respond(&mut sock, "400 Bad Request", "{}").await;
        }
    };
    let at = Instant::now();
    let reply = script.lock().unwrap().pop_front().unwrap_or(Reply::Accept);
    let keys: Vec<Value> = body["notification"]["devices"]
        .as_array()
        .map(|d| d.iter().map(|d| d["pushkey"].clone()).collect())
        .unwrap_or_default();
    let _ = tx.send(Ok(Push { body, at }));
    match reply {
        Reply::Accept => respond(&mut sock, "200 OK", r#"{"rejected":[]}"#).await,
        Reply::Reject => {
            let rejected = json!({ "rejected": keys }).to_string();
            respond(&mut sock, "200 OK", &rejected).await
        }
        Reply::Fail => respond(&mut sock, "500 Internal Server Error", "{}").await,
    }
}

/// The JSON body of a `POST` with a content-length, or why it is unreadable.
async fn read_request(sock: &mut TcpStream) -> Result<Value, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "connection closed mid-request: {}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        if !head.starts_with("POST /_matrix/push/v1/notify ") {
            return Err(format!("not a notify POST: {head}"));
        }
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>())
            })
            .ok_or_else(|| format!("no content-length: {head}"))?
            .map_err(|e| format!("bad content-length: {e}: {head}"))?;
        if buf.len() >= end + 4 + len {
            return serde_json::from_slice(&buf[end + 4..end + 4 + len])
                .map_err(|e| format!("body is not JSON: {e}"));
        }
    }
}

async fn respond(sock: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await
}

/// `POST /pushers/set` for an http pusher of `org.example.app` delivering to `url`.
async fn set_pusher(client: &Client, pushkey: &str, url: &str) -> anyhow::Result<()> {
    client
        .post(
            "/pushers/set",
            json!({"kind": "http", "app_id": "org.example.app", "pushkey": pushkey,
                   "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
                   "data": {"url": url, "format": "event_id_only"}, "append": true}),
        )
        .await?
        .ok()?;
    Ok(())
}

/// The pushkeys a push is for.
fn pushkeys(push: &Push) -> Vec<&str> {
    push.body["notification"]["devices"]
        .as_array()
        .map(|d| d.iter().filter_map(|d| d["pushkey"].as_str()).collect())
        .unwrap_or_default()
}

/// Alice's DM with Bob, Bob joined.
async fn dm(alice: &Client, bob: &Client) -> anyhow::Result<String> {
    let room = alice
        .create_room(
            json!({"preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": true}),
        )
        .await?;
    bob.join(&room).await?;
    Ok(room)
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
    let mut gateway = Gateway::start(&[]).await?;
    // bad URLs are refused
    bob.post(
        "/pushers/set",
        json!({"kind": "http", "app_id": "org.example.app", "pushkey": "k1", "app_display_name": "App",
               "device_display_name": "Phone", "lang": "en", "data": {"url": "http://127.0.0.1:1/wrong"}}),
    )
    .await?
    .expect_error(400, "M_INVALID_PARAM")?;
    set_pusher(&bob, "k1", &gateway.url).await?;
    let listed = bob.get("/pushers").await?.ok()?;
    assert_eq!(listed["pushers"][0]["pushkey"], "k1", "{listed}");
    assert_eq!(listed["pushers"][0]["data"]["url"], gateway.url.as_str());

    let room = dm(&alice, &bob).await?;
    let sent = alice.say(&room, "ping bob").await?;
    // the invite notifies too
    let (push, _) = gateway.recv_event(&sent).await;
    let n = &push.body["notification"];
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["devices"][0]["pushkey"], "k1");
    assert_eq!(n["devices"][0]["app_id"], "org.example.app");
    // bob has read nothing: the invite and "ping bob" notified him, as his sync says
    assert_eq!(n["counts"]["unread"], 2, "{n}");
    let s = bob.sync("timeout=0").await?;
    assert_eq!(
        s["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 2,
        "{s}"
    );
    assert!(
        n.get("content").is_none(),
        "event_id_only must not carry content: {n}"
    );

    // the pusher outlives a restart
    server.restart().await?;
    let sent = alice.say(&room, "after restart").await?;
    let (push, _) = gateway.recv_event(&sent).await;
    assert_eq!(pushkeys(&push), ["k1"]);

    // deleting a pusher stops its pushes: k2 stays, and its push of a later event is the
    // barrier after which k1 would have had its push of the earlier one
    set_pusher(&bob, "k2", &gateway.url).await?;
    bob.post(
        "/pushers/set",
        json!({"kind": null, "app_id": "org.example.app", "pushkey": "k1"}),
    )
    .await?
    .ok()?;
    let listed = bob.get("/pushers").await?.ok()?;
    let keys: Vec<&str> = listed["pushers"]
        .as_array()
        .expect("pushers")
        .iter()
        .filter_map(|p| p["pushkey"].as_str())
        .collect();
    assert_eq!(keys, ["k2"], "{listed}");
    let quiet = alice.say(&room, "no push for k1").await?;
    let barrier = alice.say(&room, "barrier").await?;
    // Deliveries run concurrently: take pushes until both events' have come, in any order.
    let mut window: Vec<Push> = Vec::new();
    let has = |window: &[Push], id: &str| {
        window
            .iter()
            .any(|p| p.body["notification"]["event_id"] == id)
    };
    while !(has(&window, &quiet) && has(&window, &barrier)) {
        window.push(gateway.recv().await);
    }
    for push in &window {
        assert_eq!(
            pushkeys(push),
            ["k2"],
            "a push for k1 after its deletion: {}",
            push.body
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_rejected_pushkey_removes_the_pusher() -> anyhow::Result<()> {
    // The fake gateway listens on loopback, which pushers may only reach when allowed.
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_PUSH_GATEWAY_ALLOW_CIDRS", "127.0.0.0/8"),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = dm(&alice, &bob).await?;
    let mut gateway = Gateway::start(&[Reply::Reject]).await?;
    set_pusher(&bob, "gone", &gateway.url).await?;
    let sent = alice.say(&room, "ping").await?;
    let (push, before) = gateway.recv_event(&sent).await;
    assert!(
        before.is_empty(),
        "pushes before the message: {}",
        before.len()
    );
    assert_eq!(pushkeys(&push), ["gone"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = bob.get("/pushers").await?.ok()?;
        if listed["pushers"] == json!([]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rejected pusher was kept: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn gateway_errors_are_retried_with_backoff() -> anyhow::Result<()> {
    // The fake gateway listens on loopback, which pushers may only reach when allowed.
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_PUSH_GATEWAY_ALLOW_CIDRS", "127.0.0.0/8"),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = dm(&alice, &bob).await?;
    let mut gateway = Gateway::start(&[Reply::Fail, Reply::Fail]).await?;
    set_pusher(&bob, "k1", &gateway.url).await?;
    let sent = alice.say(&room, "ping").await?;
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let (push, before) = gateway.recv_event(&sent).await;
        assert!(before.is_empty(), "other pushes: {}", before.len());
        attempts.push(push.at);
    }
    // backoff 1 s, then 2 s (a little slack for the clocks)
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= Duration::from_millis(900), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1800), "{gaps:?}");
    assert!(gaps[1] > gaps[0], "no backoff: {gaps:?}");
    // the third attempt succeeded: a later event's push comes with no fourth attempt
    let later = alice.say(&room, "later").await?;
    let (_, before) = gateway.recv_event(&later).await;
    assert!(
        before.is_empty(),
        "retried after success: {:?}",
        before.iter().map(|p| &p.body).collect::<Vec<_>>()
    );
    // the pusher is still there
    let listed = bob.get("/pushers").await?.ok()?;
    assert_eq!(listed["pushers"][0]["pushkey"], "k1", "{listed}");
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
