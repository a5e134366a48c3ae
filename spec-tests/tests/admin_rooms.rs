//! Admin API, rooms, driven as synapse-admin does: list with search and order, details,
//! members, state, and blocking.

use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, invite_and_join, Client, Response, TestServer};

async fn admin_get(c: &Client, path: &str) -> anyhow::Result<Response> {
    c.request(Method::GET, &format!("/_synapse/admin{path}"), None)
        .await
}

fn room_names(list: &Value) -> Vec<&str> {
    list["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("-"))
        .collect()
}

/// Alpha (1 member), Beta (3 members), Gamma (2 members).
async fn three_rooms(server: &TestServer) -> anyhow::Result<(Client, Vec<String>)> {
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let mut rooms = Vec::new();
    for (name, members) in [
        ("Alpha", vec![]),
        ("Beta", vec![&bob, &carol]),
        ("Gamma", vec![&bob]),
    ] {
        let room = alice
            .create_room(json!({"name": name, "preset": "public_chat",
                                "room_alias_name": name.to_lowercase()}))
            .await?;
        for member in members {
            member.join(&room).await?;
        }
        rooms.push(room);
    }
    Ok((alice, rooms))
}

#[tokio::test]
async fn rooms_are_listed_searched_ordered_and_paged() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let (_alice, rooms) = three_rooms(&server).await?;
    let all = admin_get(&admin, "/v1/rooms").await?.ok()?;
    assert_eq!(room_names(&all), ["Alpha", "Beta", "Gamma"]);
    assert_eq!(
        (all["total_rooms"].clone(), all["offset"].clone()),
        (json!(3), json!(0))
    );
    let beta = &all["rooms"][1];
    assert_eq!(beta["room_id"], rooms[1]);
    assert_eq!(beta["canonical_alias"], "#beta:localhost");
    assert_eq!(beta["joined_members"], 3);
    assert_eq!(beta["joined_local_members"], 3);
    assert_eq!(beta["creator"], "@alice:localhost");
    assert_eq!(beta["join_rules"], "public");
    assert_eq!(beta["history_visibility"], "shared");
    assert_eq!(beta["federatable"], true);
    assert_eq!(beta["encryption"], Value::Null);
    assert_eq!(beta["room_type"], Value::Null);
    assert!(
        beta["version"].is_string() && beta["state_events"].as_u64().unwrap() >= 6,
        "{beta}"
    );

    let back = admin_get(&admin, "/v1/rooms?order_by=name&dir=b")
        .await?
        .ok()?;
    assert_eq!(room_names(&back), ["Gamma", "Beta", "Alpha"]);
    let by_size = admin_get(&admin, "/v1/rooms?order_by=joined_members")
        .await?
        .ok()?;
    assert_eq!(room_names(&by_size), ["Beta", "Gamma", "Alpha"]);
    let search = admin_get(&admin, "/v1/rooms?search_term=gAm").await?.ok()?;
    assert_eq!(
        (room_names(&search), search["total_rooms"].clone()),
        (vec!["Gamma"], json!(1))
    );
    let by_alias = admin_get(&admin, "/v1/rooms?search_term=%23alpha")
        .await?
        .ok()?;
    assert_eq!(room_names(&by_alias), ["Alpha"]);

    let page = admin_get(&admin, "/v1/rooms?limit=2").await?.ok()?;
    assert_eq!(
        (room_names(&page), page["next_batch"].clone()),
        (vec!["Alpha", "Beta"], json!(2))
    );
    let next = admin_get(&admin, "/v1/rooms?from=2&limit=2").await?.ok()?;
    assert_eq!(room_names(&next), ["Gamma"]);
    assert!(next.get("next_batch").is_none(), "{next}");
    assert_eq!(next["prev_batch"], 0);
    admin_get(&admin, "/v1/rooms?order_by=colour")
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    Ok(())
}

#[tokio::test]
async fn room_details_members_and_state_are_shown() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let (_alice, rooms) = three_rooms(&server).await?;
    let beta = enc(&rooms[1]);
    let details = admin_get(&admin, &format!("/v1/rooms/{beta}"))
        .await?
        .ok()?;
    assert_eq!(details["name"], "Beta");
    assert_eq!(details["joined_members"], 3);
    assert_eq!(details["public"], false, "not published to the directory");
    assert_eq!(details["blocked"], false);

    let members = admin_get(&admin, &format!("/v1/rooms/{beta}/members"))
        .await?
        .ok()?;
    assert_eq!(
        members,
        json!({"total": 3, "members": ["@alice:localhost", "@bob:localhost", "@carol:localhost"]})
    );
    let state = admin_get(&admin, &format!("/v1/rooms/{beta}/state"))
        .await?
        .ok()?;
    let state = state["state"].as_array().unwrap();
    assert_eq!(
        state.len() as u64,
        details["state_events"].as_u64().unwrap()
    );
    let name = state.iter().find(|e| e["type"] == "m.room.name").unwrap();
    assert_eq!(name["content"]["name"], "Beta");
    assert!(state.iter().any(|e| e["type"] == "m.room.create"));

    for suffix in ["", "/members", "/state"] {
        admin_get(
            &admin,
            &format!("/v1/rooms/{}{suffix}", enc("!unknown:localhost")),
        )
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    }
    admin_get(&admin, "/v1/rooms/not-a-room-id")
        .await?
        .expect_error(400, "M_INVALID_PARAM")?;
    Ok(())
}

#[tokio::test]
async fn a_blocked_room_refuses_joins_and_invites_until_unblocked() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let admin = server.admin("admin").await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    invite_and_join(&alice, &carol, &room).await?;
    let block_path = format!("/_synapse/admin/v1/rooms/{}/block", enc(&room));
    let blocked = admin
        .request(Method::PUT, &block_path, Some(&json!({"block": true})))
        .await?
        .ok()?;
    assert_eq!(blocked, json!({"block": true}));
    assert_eq!(
        admin.request(Method::GET, &block_path, None).await?.ok()?,
        json!({"block": true, "user_id": admin.user_id})
    );
    let before = alice
        .get(&format!("/rooms/{}/state", enc(&room)))
        .await?
        .ok()?;

    bob.post(&format!("/join/{}", enc(&room)), json!({}))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    bob.put(
        &format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&bob.user_id)
        ),
        json!({"membership": "join"}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;
    alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": bob.user_id}),
        )
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    // Members already in stay and may talk; only joins (and invites, knocks) are refused.
    carol.say(&room, "still here").await?;
    assert_eq!(
        alice
            .get(&format!("/rooms/{}/state", enc(&room)))
            .await?
            .ok()?,
        before
    );
    assert_eq!(
        bob.get("/joined_rooms").await?.ok()?["joined_rooms"],
        json!([])
    );

    admin
        .request(Method::PUT, &block_path, Some(&json!({"block": false})))
        .await?
        .ok()?;
    assert_eq!(
        admin.request(Method::GET, &block_path, None).await?.ok()?,
        json!({"block": false})
    );
    bob.join(&room).await?;
    Ok(())
}
