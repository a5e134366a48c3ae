//! Endpoints clients call at start-up: `/versions` features, `/voip/turnServer`,
//! `/thirdparty/protocols`, `/user_directory/search`, `auth_metadata`.

use reqwest::Method;
use serde_json::json;
use spec_tests::{invite_and_join, TestServer};

#[tokio::test]
async fn versions_advertise_working_unstable_features() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let v = server
        .client()
        .request(Method::GET, "/_matrix/client/versions", None)
        .await?
        .ok()?;
    assert_eq!(
        v["unstable_features"]["org.matrix.simplified_msc3575"], true,
        "{v}"
    );
    // OAuth metadata is not offered, so clients use password login
    server
        .client()
        .request(Method::GET, "/_matrix/client/v1/auth_metadata", None)
        .await?
        .expect_error(404, "M_UNRECOGNIZED")?;
    Ok(())
}

#[tokio::test]
async fn turn_server_and_thirdparty() -> anyhow::Result<()> {
    let plain = TestServer::start().await?;
    let alice = plain.register("alice").await?;
    let turn = alice.get("/voip/turnServer").await?.ok()?;
    assert!(
        turn.get("uris")
            .is_none_or(|u| u.as_array().is_some_and(|a| a.is_empty())),
        "{turn}"
    );
    assert_eq!(alice.get("/thirdparty/protocols").await?.ok()?, json!({}));
    plain
        .client()
        .get("/voip/turnServer")
        .await?
        .expect_error(401, "M_MISSING_TOKEN")?;

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("myelin.toml");
    std::fs::write(
        &config,
        "[voip]\nturn_uris = [\"turn:turn.example.org:3478?transport=udp\"]\nturn_shared_secret = \"s3cret\"\nturn_ttl_secs = 600\n",
    )?;
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_CONFIG", config.to_str().unwrap()),
    ])
    .await?;
    let bob = server.register("bob").await?;
    let turn = bob.get("/voip/turnServer").await?.ok()?;
    assert_eq!(
        turn["uris"],
        json!(["turn:turn.example.org:3478?transport=udp"])
    );
    assert_eq!(turn["ttl"], 600);
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "@bob:localhost");
    assert!(expiry.parse::<u64>()? > 1_700_000_000);
    assert_eq!(
        turn["password"].as_str().unwrap().len(),
        28,
        "base64 of a SHA-1 HMAC"
    );
    Ok(())
}

#[tokio::test]
async fn user_directory_search() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let _carol = server.register("carol").await?;
    let dave = server.register("dave").await?;
    bob.put(
        &format!("/profile/{}/displayname", spec_tests::enc(&bob.user_id)),
        json!({"displayname": "Bobby Tables"}),
    )
    .await?
    .ok()?;
    let shared = alice.create_room(json!({})).await?;
    invite_and_join(&alice, &bob, &shared).await?;
    let public = dave
        .create_room(json!({"preset": "public_chat", "visibility": "public"}))
        .await?;
    let _ = public;

    let found = alice
        .post("/user_directory/search", json!({"search_term": "tables"}))
        .await?
        .ok()?;
    assert_eq!(
        found["results"][0]["user_id"],
        bob.user_id.as_str(),
        "{found}"
    );
    assert_eq!(found["results"][0]["display_name"], "Bobby Tables");
    // dave is in a public room: findable; carol shares nothing: not findable
    let found = alice
        .post("/user_directory/search", json!({"search_term": "dave"}))
        .await?
        .ok()?;
    assert_eq!(found["results"].as_array().unwrap().len(), 1);
    let found = alice
        .post("/user_directory/search", json!({"search_term": "carol"}))
        .await?
        .ok()?;
    assert_eq!(found["results"], json!([]));
    let all = alice
        .post(
            "/user_directory/search",
            json!({"search_term": "localhost", "limit": 1}),
        )
        .await?
        .ok()?;
    assert_eq!(all["results"].as_array().unwrap().len(), 1);
    assert_eq!(all["limited"], true);
    Ok(())
}
