//! Third-party networks through bridges: the protocols the registered appservices
//! declare, their metadata and instances merged across bridges, and location and user
//! lookups forwarded to them (`/_matrix/app/v1/thirdparty/...` with the `hs_token`).

use std::time::Duration;

use serde_json::{json, Value};
use spec_tests::{
    enc,
    fake_appservice::{write_registration, AsRequest, FakeAppservice},
    TestServer,
};

fn protocol_info(network: &str, desc: &str) -> Value {
    json!({
        "user_fields": ["nick"],
        "location_fields": ["channel"],
        "icon": "mxc://example.org/irc",
        "field_types": {
            "nick": {"regexp": "[^\\s]+", "placeholder": "nick"},
            "channel": {"regexp": "#[^\\s]+", "placeholder": "#channel"},
        },
        "instances": [{"desc": desc, "network_id": network, "fields": {"network": network}}],
    })
}

fn with_protocols(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, format!("{text}protocols: [\"irc\"]\n")).unwrap();
}

#[tokio::test]
async fn protocols_and_lookups_come_from_the_bridges() {
    let alias = "#irc_rust:localhost";
    let first = FakeAppservice::start_replying(Box::new(move |req: &AsRequest| {
        let path = req.path.as_str();
        if path == "/_matrix/app/v1/thirdparty/protocol/irc" {
            (200, protocol_info("libera", "Libera Chat"))
        } else if path.starts_with("/_matrix/app/v1/thirdparty/location/irc?") {
            (
                200,
                json!([{"alias": alias, "protocol": "irc", "fields": {"channel": "#rust"}}]),
            )
        } else if path.starts_with("/_matrix/app/v1/thirdparty/user/irc?") {
            (
                200,
                json!([{"userid": "@ir_alice:localhost", "protocol": "irc", "fields": {"nick": "alice"}}]),
            )
        } else if path.starts_with("/_matrix/app/v1/thirdparty/location?alias=") {
            (
                200,
                json!([{"alias": alias, "protocol": "irc", "fields": {"channel": "#rust"}}]),
            )
        } else if path.starts_with("/_matrix/app/v1/thirdparty/user?userid=") {
            (
                200,
                json!([{"userid": "@ir_alice:localhost", "protocol": "irc", "fields": {"nick": "alice"}}]),
            )
        } else {
            (404, json!({"errcode": "M_NOT_FOUND", "error": "no"}))
        }
    }))
    .await
    .unwrap();
    // A second bridge of the same protocol: its instance is added; its user lookup fails
    // and is left out; one of its locations does not have the spec's shape.
    let mut second = FakeAppservice::start_replying(Box::new(|req: &AsRequest| {
        let path = req.path.as_str();
        if path == "/_matrix/app/v1/thirdparty/protocol/irc" {
            (200, protocol_info("oftc", "OFTC"))
        } else if path.starts_with("/_matrix/app/v1/thirdparty/location/irc?") {
            (200, json!([{"protocol": "irc"}]))
        } else {
            (500, json!({"errcode": "M_UNKNOWN", "error": "down"}))
        }
    }))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let one = write_registration(dir.path(), "ir", Some(&first.url)).unwrap();
    let two = write_registration(dir.path(), "ix", Some(&second.url)).unwrap();
    let plain = write_registration(dir.path(), "pl", None).unwrap();
    with_protocols(&one);
    with_protocols(&two);
    let list = [&one, &two, &plain]
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_APPSERVICES", list.as_str()),
    ])
    .await
    .unwrap();
    let bob = server.register("bob").await.unwrap();

    let all = bob
        .get("/thirdparty/protocols")
        .await
        .unwrap()
        .ok()
        .unwrap();
    let irc = &all["irc"];
    assert_eq!(all.as_object().unwrap().len(), 1, "{all}");
    assert_eq!(irc["location_fields"], json!(["channel"]), "{all}");
    let mut ids: Vec<&str> = irc["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["ir|libera", "ix|oftc"], "{all}");
    let one_protocol = bob
        .get("/thirdparty/protocol/irc")
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(one_protocol["instances"].as_array().unwrap().len(), 2);
    bob.get("/thirdparty/protocol/xmpp")
        .await
        .unwrap()
        .expect_error(404, "M_NOT_FOUND")
        .unwrap();

    let locations = bob
        .get(&format!(
            "/thirdparty/location/irc?channel={}",
            enc("#rust")
        ))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        locations,
        json!([{"alias": alias, "protocol": "irc", "fields": {"channel": "#rust"}}])
    );
    let users = bob
        .get("/thirdparty/user/irc?nick=alice")
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(users[0]["userid"], "@ir_alice:localhost", "{users}");
    assert_eq!(users.as_array().unwrap().len(), 1, "{users}");
    bob.get("/thirdparty/location/xmpp?channel=x")
        .await
        .unwrap()
        .expect_error(404, "M_NOT_FOUND")
        .unwrap();

    let by_alias = bob
        .get(&format!("/thirdparty/location?alias={}", enc(alias)))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(by_alias[0]["fields"]["channel"], "#rust", "{by_alias}");
    let by_user = bob
        .get(&format!(
            "/thirdparty/user?userid={}",
            enc("@ir_alice:localhost")
        ))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(by_user[0]["fields"]["nick"], "alice", "{by_user}");

    // The bridges were asked with their hs_token and the client's fields.
    let asked = second.drain(Duration::from_millis(300)).await;
    assert!(!asked.is_empty());
    assert!(asked
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer ix_hs")));
    assert!(
        asked
            .iter()
            .any(|r| r.path == "/_matrix/app/v1/thirdparty/location/irc?channel=%23rust"),
        "{asked:#?}"
    );
}
