//! Event reports: users report what they see; administrators list, read and delete them.

use reqwest::Method;
use serde_json::json;
use spec_tests::{enc, invite_and_join, Client, Response, TestServer};

async fn admin_get(c: &Client, path: &str) -> anyhow::Result<Response> {
    c.request(Method::GET, &format!("/_synapse/admin/v1{path}"), None)
        .await
}

#[tokio::test]
async fn a_report_is_listed_read_and_deleted() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice.create_room(json!({"name": "Lounge"})).await?;
    invite_and_join(&alice, &bob, &room).await?;
    let spam = alice.say(&room, "buy now").await?;
    let reported = bob
        .post(
            &format!("/rooms/{}/report/{}", enc(&room), enc(&spam)),
            json!({"reason": "spam", "score": -100}),
        )
        .await?
        .ok()?;
    assert_eq!(reported, json!({}));

    let list = admin_get(&admin, "/event_reports").await?.ok()?;
    assert_eq!(list["total"], 1);
    let report = &list["event_reports"][0];
    assert_eq!(report["event_id"], spam);
    assert_eq!(report["room_id"], room);
    assert_eq!(report["user_id"], bob.user_id);
    assert_eq!(report["sender"], alice.user_id);
    assert_eq!(report["reason"], "spam");
    assert_eq!(report["score"], -100);
    assert_eq!(report["name"], "Lounge");
    let id = report["id"].as_u64().unwrap();

    let one = admin_get(&admin, &format!("/event_reports/{id}"))
        .await?
        .ok()?;
    assert_eq!(one["event_json"]["content"]["body"], "buy now");
    let by_room = admin_get(&admin, &format!("/event_reports?room_id={}", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(by_room["total"], 1);
    let by_alice = admin_get(
        &admin,
        &format!("/event_reports?user_id={}", enc(&alice.user_id)),
    )
    .await?
    .ok()?;
    assert_eq!(by_alice["total"], 0);

    admin
        .request(
            Method::DELETE,
            &format!("/_synapse/admin/v1/event_reports/{id}"),
            None,
        )
        .await?
        .ok()?;
    admin_get(&admin, &format!("/event_reports/{id}"))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    assert_eq!(admin_get(&admin, "/event_reports").await?.ok()?["total"], 0);
    Ok(())
}

#[tokio::test]
async fn reporting_an_event_one_cannot_see_is_404_and_records_nothing() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let alice = server.register("alice").await?;
    let carol = server.register("carol").await?;
    let room = alice.create_room(json!({})).await?;
    let secret = alice.say(&room, "members only").await?;
    carol
        .post(
            &format!("/rooms/{}/report/{}", enc(&room), enc(&secret)),
            json!({"reason": "curious"}),
        )
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    alice
        .post(
            &format!("/rooms/{}/report/{}", enc(&room), enc("$missing")),
            json!({}),
        )
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    alice
        .post(
            &format!("/rooms/{}/report/{}", enc(&room), enc(&secret)),
            json!({"score": 5}),
        )
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    assert_eq!(admin_get(&admin, "/event_reports").await?.ok()?["total"], 0);
    Ok(())
}

#[tokio::test]
async fn a_room_report_is_listed_read_and_deleted_apart_from_event_reports() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({"name": "Bazaar", "preset": "public_chat"}))
        .await?;
    // Any user may report an existing room, member or not (as Synapse).
    let reported = bob
        .post(
            &format!("/rooms/{}/report", enc(&room)),
            json!({"reason": "scam market"}),
        )
        .await?
        .ok()?;
    assert_eq!(reported, json!({}));
    bob.post("/rooms/!nowhere:localhost/report", json!({"reason": "x"}))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    bob.post(
        &format!("/rooms/{}/report", enc(&room)),
        json!({"reason": "x".repeat(5000)}),
    )
    .await?
    .expect_error(400, "M_INVALID_PARAM")?;
    // The unstable MSC4151 path is the same endpoint.
    bob.request(
        Method::POST,
        &format!(
            "/_matrix/client/unstable/org.matrix.msc4151/rooms/{}/report",
            enc(&room)
        ),
        Some(&json!({"reason": "again"})),
    )
    .await?
    .ok()?;

    let list = admin_get(&admin, "/room_reports?dir=f").await?.ok()?;
    assert_eq!(list["total"], 2, "{list}");
    let report = &list["room_reports"][0];
    assert_eq!(report["room_id"], room);
    assert_eq!(report["user_id"], bob.user_id);
    assert_eq!(report["reason"], "scam market");
    assert_eq!(report["name"], "Bazaar");
    assert!(report.get("event_id").is_none(), "{report}");
    let id = report["id"].as_u64().unwrap();
    // Event reports and room reports are listed apart.
    assert_eq!(admin_get(&admin, "/event_reports").await?.ok()?["total"], 0);
    admin_get(&admin, &format!("/event_reports/{id}"))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    let one = admin_get(&admin, &format!("/room_reports/{id}"))
        .await?
        .ok()?;
    assert_eq!(one["reason"], "scam market");
    // Only administrators.
    admin_get(&bob, "/room_reports")
        .await?
        .expect_error(403, "M_FORBIDDEN")?;

    admin
        .request(
            Method::DELETE,
            &format!("/_synapse/admin/v1/room_reports/{id}"),
            None,
        )
        .await?
        .ok()?;
    let list = admin_get(&admin, "/room_reports").await?.ok()?;
    assert_eq!(list["total"], 1);
    assert_eq!(list["room_reports"][0]["reason"], "again");
    Ok(())
}
