//! Meetings against the real binary: join links (create, read, revoke), external guests
//! joining by link with their restrictions and their removal when their call membership
//! expires, internal users joining temporarily and being removed when they leave the
//! call or stay idle, the meetings list, the `.ics` export parsed back by Python's
//! `icalendar`, and personal meeting rooms.

mod kinds_common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kinds_common::{create_virtual_room, myelin, VIRTUAL_ROOM};
use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{enc, http_client, invite_and_join, run_program, Client, Response, TestServer};

/// Idle time of temporary participants in these tests (the sweeper then looks every 2 s).
const IDLE_SECS: &str = "8";

async fn server() -> anyhow::Result<TestServer> {
    TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_MEETINGS_TEMPORARY_IDLE_SECS", IDLE_SECS),
    ])
    .await
}

async fn join_link(c: &Client, room: &str) -> anyhow::Result<Response> {
    c.request(
        Method::POST,
        &myelin(&format!("/rooms/{}/join_link", enc(room))),
        Some(&json!({})),
    )
    .await
}

/// A room's join link token, asked for by a moderator.
async fn link_token(c: &Client, room: &str) -> anyhow::Result<String> {
    let link = join_link(c, room).await?.ok()?;
    Ok(link["token"].as_str().context("token")?.to_owned())
}

async fn lobby(server: &TestServer, token: &str) -> anyhow::Result<Response> {
    server
        .client()
        .request(Method::GET, &myelin(&format!("/join/{token}")), None)
        .await
}

async fn join_by_link(c: &Client, token: &str, body: Value) -> anyhow::Result<Response> {
    c.request(
        Method::POST,
        &myelin(&format!("/join/{token}")),
        Some(&body),
    )
    .await
}

/// Registers a guest account (no password, no name).
async fn guest(server: &TestServer) -> anyhow::Result<Client> {
    let reg = server
        .client()
        .post("/register?kind=guest", json!({}))
        .await?
        .ok()?;
    let mut guest = server.client();
    guest.token = reg["access_token"].as_str().map(str::to_owned);
    guest.user_id = reg["user_id"].as_str().context("user_id")?.to_owned();
    guest.device_id = reg["device_id"].as_str().context("device_id")?.to_owned();
    Ok(guest)
}

async fn leave_call(c: &Client, room: &str) -> anyhow::Result<()> {
    let key = format!("_{}_{}_m.call", c.user_id, c.device_id);
    c.set_state(room, "org.matrix.msc3401.call.member", &key, json!({}))
        .await?
        .ok()?;
    Ok(())
}

async fn member_content(c: &Client, room: &str, user: &str) -> anyhow::Result<Value> {
    c.get(&format!(
        "/rooms/{}/state/m.room.member/{}",
        enc(room),
        enc(user)
    ))
    .await?
    .ok()
}

/// Waits (at most `limit`) until `user`'s membership, as `observer` sees it, is `leave`.
async fn wait_left(
    observer: &Client,
    room: &str,
    user: &str,
    limit: Duration,
) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        let content = member_content(observer, room, user).await?;
        if content["membership"] == "leave" {
            return Ok(content);
        }
        if start.elapsed() > limit {
            bail!("{user} still {content} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `POST {service}/sfu/get` with `c`'s OpenID token: the JWT's claims.
async fn sfu_claims(c: &Client, room: &str) -> anyhow::Result<Value> {
    let openid = c.openid_token().await?;
    let resp = http_client(Duration::from_secs(30))
        .post(format!("{}/sfu/get", c.base))
        .json(&json!({"room": room, "openid_token": openid, "device_id": c.device_id}))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await?;
    if status != 200 {
        bail!("/sfu/get: {status} {body}");
    }
    let payload = body["jwt"]
        .as_str()
        .and_then(|jwt| jwt.split('.').nth(1))
        .context("jwt")?;
    Ok(serde_json::from_slice(&base64url(payload))?)
}

fn base64url(s: &str) -> Vec<u8> {
    let (mut out, mut buf, mut bits) = (Vec::new(), 0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => continue,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn join_links_are_created_read_and_revoked() -> anyhow::Result<()> {
    let server = server().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = create_virtual_room(&alice, "Town hall", json!({"topic": "All hands"})).await?;
    invite_and_join(&alice, &bob, &room).await?;

    let link = join_link(&alice, &room).await?.ok()?;
    let token = link["token"].as_str().context("token")?.to_owned();
    assert_eq!(
        link["url"],
        format!("{}/meet/{token}", server.base),
        "{link}"
    );
    assert_eq!(
        join_link(&alice, &room).await?.ok()?,
        link,
        "the same link again"
    );

    // Only moderators manage the link.
    join_link(&bob, &room)
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    bob.request(
        Method::DELETE,
        &myelin(&format!("/rooms/{}/join_link", enc(&room))),
        None,
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;

    let lobby_view = lobby(&server, &token).await?.ok()?;
    assert_eq!(
        lobby_view,
        json!({"room_id": room, "name": "Town hall", "topic": "All hands", "avatar_url": null,
            "kind": "virtual_room", "call": {"active": false, "participants": 0}})
    );
    bob.join_call(&room, &bob.base, 60_000).await?;
    let lobby_view = lobby(&server, &token).await?.ok()?;
    assert_eq!(
        lobby_view["call"],
        json!({"active": true, "participants": 1})
    );
    lobby(&server, "nope")
        .await?
        .expect_error(404, "M_NOT_FOUND")?;

    alice
        .request(
            Method::DELETE,
            &myelin(&format!("/rooms/{}/join_link", enc(&room))),
            None,
        )
        .await?
        .ok()?;
    lobby(&server, &token)
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    let carol = server.register("carol").await?;
    join_by_link(&carol, &token, json!({}))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    let fresh = link_token(&alice, &room).await?;
    assert_ne!(fresh, token, "a revoked link is not handed out again");
    lobby(&server, &fresh).await?.ok()?;
    Ok(())
}

#[tokio::test]
async fn a_guest_joins_by_link_takes_part_and_is_refused_elsewhere() -> anyhow::Result<()> {
    // General guest access stays off: this guest exists for the meeting only.
    let server = server().await?;
    let alice = server.register("alice").await?;
    let room = create_virtual_room(&alice, "Sales call", json!({})).await?;
    let other = create_virtual_room(&alice, "Board", json!({})).await?;
    let token = link_token(&alice, &room).await?;

    let guest = guest(&server).await?;
    join_by_link(&guest, &token, json!({}))
        .await?
        .expect_error(400, "M_MISSING_PARAM")?;
    for bad in ["", "bell\u{7}", &"x".repeat(65)] {
        join_by_link(&guest, &token, json!({"display_name": bad}))
            .await?
            .expect_error(400, "M_INVALID_PARAM")?;
    }
    let joined = join_by_link(&guest, &token, json!({"display_name": "Gina Guest"}))
        .await?
        .ok()?;
    assert_eq!(joined["room_id"], room.as_str());

    // The moderator sees a temporary participant.
    let member = member_content(&alice, &room, &guest.user_id).await?;
    assert_eq!(member["membership"], "join", "{member}");
    assert_eq!(member["io.myelin.temporary"], true, "{member}");
    assert_eq!(member["displayname"], "Gina Guest", "{member}");

    // What the guest may do in the meeting.
    // Ten seconds in the call: time enough for the checks below, then it expires.
    guest.join_call(&room, &guest.base, 10_000).await?;
    guest.say(&room, "hello from the guest").await?;
    guest
        .get(&format!("/rooms/{}/messages?dir=b", enc(&room)))
        .await?
        .ok()?;
    let claims = sfu_claims(&guest, &room).await?;
    let alice_claims = sfu_claims(&alice, &room).await?;
    assert_eq!(
        claims["sub"],
        format!("{}:{}", guest.user_id, guest.device_id),
        "{claims}"
    );
    assert_eq!(
        claims["video"]["room"], alice_claims["video"]["room"],
        "{claims}"
    );
    assert_eq!(claims["video"]["roomJoin"], true);
    // The newer token endpoints too: lk-jwt-service's /get_token and MSC4195's.
    let openid = guest.openid_token().await?;
    let resp = http_client(Duration::from_secs(30))
        .post(format!("{}/get_token", guest.base))
        .json(
            &json!({"room_id": room, "slot_id": "m.call#ROOM", "openid_token": openid,
            "member": {"id": "m1", "claimed_user_id": guest.user_id,
                "claimed_device_id": guest.device_id}}),
        )
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200, "/get_token");
    let msc4195 = guest
        .request(
            Method::POST,
            "/_matrix/client/v1/rtc/livekit/get_token",
            Some(
                &json!({"room_id": room, "slot_id": "m.call#ROOM", "member_id": "m1",
                "url": "ws://127.0.0.1:7880"}),
            ),
        )
        .await?
        .ok()?;
    assert!(msc4195["jwt"].is_string(), "{msc4195}");
    guest
        .get(&format!("/profile/{}", enc(&guest.user_id)))
        .await?
        .ok()?;

    // And nothing else.
    let refused = [
        guest.post("/createRoom", json!({})).await?,
        guest
            .get(&format!("/rooms/{}/messages?dir=b", enc(&other)))
            .await?,
        guest
            .post(&format!("/rooms/{}/join", enc(&other)), json!({}))
            .await?,
        guest
            .post(
                &format!("/rooms/{}/invite", enc(&room)),
                json!({"user_id": alice.user_id}),
            )
            .await?,
        guest
            .set_state(&room, "m.room.topic", "", json!({"topic": "mine"}))
            .await?,
        guest.get("/publicRooms").await?,
        guest.post("/publicRooms", json!({})).await?,
        guest
            .get(&format!("/profile/{}", enc(&alice.user_id)))
            .await?,
        guest
            .post("/user_directory/search", json!({"search_term": "alice"}))
            .await?,
        join_link(&guest, &room).await?,
        guest
            .request(Method::GET, &myelin("/meetings"), None)
            .await?,
    ];
    for resp in refused {
        resp.expect_error(403, "M_GUEST_ACCESS_FORBIDDEN")?;
    }
    let upload = http_client(Duration::from_secs(30))
        .post(format!("{}/_matrix/media/v3/upload", server.base))
        .bearer_auth(guest.token.as_deref().unwrap_or_default())
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await?;
    assert_eq!(upload.status().as_u16(), 403);

    // The call membership expires: the server removes the guest and retires the account.
    let left = wait_left(&alice, &room, &guest.user_id, Duration::from_secs(30)).await?;
    assert_eq!(left["reason"], "Left the meeting", "{left}");
    let start = Instant::now();
    loop {
        let who = guest.get("/account/whoami").await?;
        if who.status == 401 {
            who.expect_error(401, "M_UNKNOWN_TOKEN")?;
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("the guest's token still works: {}", who.text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn an_internal_user_joins_temporarily_and_leaves_with_the_call() -> anyhow::Result<()> {
    let server = server().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = create_virtual_room(&alice, "Design review", json!({})).await?;
    let token = link_token(&alice, &room).await?;

    join_by_link(&bob, &token, json!({})).await?.ok()?;
    let member = member_content(&alice, &room, &bob.user_id).await?;
    assert_eq!(member["io.myelin.temporary"], true, "{member}");
    assert_eq!(member["displayname"], "bob", "{member}");
    bob.say(&room, "hi").await?;
    bob.join_call(&room, &bob.base, 3_600_000).await?;
    // In that room a temporary participant only reads, posts and takes part in the call.
    bob.post(
        &format!("/rooms/{}/invite", enc(&room)),
        json!({"user_id": carol.user_id}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;
    bob.set_state(&room, "m.room.topic", "", json!({"topic": "mine"}))
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    // Elsewhere the account works as usual.
    bob.create_room(json!({"name": "Bob's own"})).await?;

    // A member who joins by link just joins.
    let dave = server.register("dave").await?;
    invite_and_join(&alice, &dave, &room).await?;
    join_by_link(&dave, &token, json!({})).await?.ok()?;
    let member = member_content(&alice, &room, &dave.user_id).await?;
    assert!(member.get("io.myelin.temporary").is_none(), "{member}");

    // Leaving the call removes the temporary participant; the account lives on.
    leave_call(&bob, &room).await?;
    let left = wait_left(&alice, &room, &bob.user_id, Duration::from_secs(20)).await?;
    assert_eq!(left["reason"], "Left the meeting", "{left}");
    assert_eq!(
        bob.get("/account/whoami").await?.ok()?["user_id"],
        bob.user_id.as_str()
    );

    // Never joining the call: removed after the idle time.
    let joined_at = Instant::now();
    join_by_link(&carol, &token, json!({"display_name": "Carol (visitor)"}))
        .await?
        .ok()?;
    let left = wait_left(&alice, &room, &carol.user_id, Duration::from_secs(30)).await?;
    assert!(
        joined_at.elapsed() >= Duration::from_secs(7),
        "removed before the idle time"
    );
    assert_eq!(left["reason"], "Not in the meeting's call", "{left}");

    // A moderator may remove a temporary participant at once.
    let erin = server.register("erin").await?;
    join_by_link(&erin, &token, json!({})).await?.ok()?;
    alice
        .post(
            &format!("/rooms/{}/kick", enc(&room)),
            json!({"user_id": erin.user_id}),
        )
        .await?
        .ok()?;
    assert_eq!(
        member_content(&alice, &room, &erin.user_id).await?["membership"],
        "leave"
    );
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const SCHEDULE: &str = "io.myelin.meeting.schedule";

#[tokio::test]
async fn meetings_list_shows_live_calls_and_future_schedules() -> anyhow::Result<()> {
    let server = server().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let hour = 3_600_000;
    let now = now_ms();

    let live = create_virtual_room(&alice, "Live", json!({})).await?;
    alice.join_call(&live, &alice.base, hour).await?;
    let future = create_virtual_room(&alice, "Future", json!({})).await?;
    alice
        .set_state(
            &future,
            SCHEDULE,
            "",
            json!({"title": "Planning", "start_ts": now + 2 * hour, "end_ts": now + 3 * hour}),
        )
        .await?
        .ok()?;
    let past = create_virtual_room(&alice, "Past", json!({})).await?;
    alice
        .set_state(
            &past,
            SCHEDULE,
            "",
            json!({"title": "Retro", "start_ts": now - 3 * hour, "end_ts": now - 2 * hour}),
        )
        .await?
        .ok()?;
    let elsewhere = create_virtual_room(&bob, "Not Alice's", json!({})).await?;
    bob.join_call(&elsewhere, &bob.base, hour).await?;
    bob.set_state(
        &elsewhere,
        SCHEDULE,
        "",
        json!({"title": "Private", "start_ts": now + hour, "end_ts": now + 2 * hour}),
    )
    .await?
    .ok()?;

    // Invalid schedules change nothing.
    for bad in [
        json!({"title": "x", "start_ts": now + hour, "end_ts": now + hour}),
        json!({"title": "x", "start_ts": now + 2 * hour, "end_ts": now + hour}),
        json!({"title": "x", "start_ts": 1.5, "end_ts": now + hour}),
        json!({"title": "x", "start_ts": "soon", "end_ts": now + hour}),
        json!({"title": "x", "start_ts": now, "end_ts": now + hour, "rrule": "FREQ=NEVER"}),
    ] {
        let resp = alice.set_state(&future, SCHEDULE, "", bad.clone()).await?;
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text);
    }
    // Moderators schedule; members do not.
    invite_and_join(&alice, &bob, &future).await?;
    bob.set_state(
        &future,
        SCHEDULE,
        "",
        json!({"title": "Mine", "start_ts": now + hour, "end_ts": now + 2 * hour}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;

    let list = alice
        .request(Method::GET, &myelin("/meetings"), None)
        .await?
        .ok()?;
    let ongoing = list["ongoing"].as_array().context("ongoing")?;
    let scheduled = list["scheduled"].as_array().context("scheduled")?;
    assert_eq!(ongoing.len(), 1, "{list}");
    assert_eq!(scheduled.len(), 1, "{list}");
    let live_link = join_link(&alice, &live).await?.ok()?;
    assert_eq!(ongoing[0]["room_id"], live.as_str());
    assert_eq!(ongoing[0]["name"], "Live");
    assert_eq!(ongoing[0]["participants"], 1);
    assert_eq!(ongoing[0]["join_url"], live_link["url"], "{list}");
    assert_eq!(ongoing[0]["is_owner"], true);
    assert_eq!(ongoing[0]["is_moderator"], true);
    assert_eq!(scheduled[0]["room_id"], future.as_str());
    assert_eq!(scheduled[0]["start_ts"], now + 2 * hour);
    assert_eq!(scheduled[0]["end_ts"], now + 3 * hour);
    assert_eq!(scheduled[0]["participants"], 0);

    // Bob, a plain member of the future meeting's room, sees it too, not as its owner.
    let bobs = bob
        .request(Method::GET, &myelin("/meetings"), None)
        .await?
        .ok()?;
    let mine = bobs["scheduled"]
        .as_array()
        .context("scheduled")?
        .iter()
        .find(|m| m["room_id"] == future.as_str())
        .context("bob's list has the future meeting")?;
    assert_eq!(
        (mine["is_owner"].as_bool(), mine["is_moderator"].as_bool()),
        (Some(false), Some(false))
    );
    Ok(())
}

#[tokio::test]
async fn meeting_ics_parses_back_with_icalendar() -> anyhow::Result<()> {
    let python = std::env::var("MYELIN_ICAL_PYTHON").map_err(|_| {
        anyhow::anyhow!(
            "MYELIN_ICAL_PYTHON is not set: run the tests with spec-tests/run, which installs icalendar"
        )
    })?;
    let server = server().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = create_virtual_room(&alice, "Weekly", json!({})).await?;
    // 2030-01-07T09:00:00Z (a Monday) to 10:00, every Monday.
    let start = 1_894_006_800_000u64;
    alice
        .set_state(
            &room,
            SCHEDULE,
            "",
            json!({"title": "Weekly sync", "start_ts": start, "end_ts": start + 3_600_000,
                "rrule": "FREQ=WEEKLY;BYDAY=MO", "description": "Agenda, notes; more"}),
        )
        .await?
        .ok()?;
    let link = join_link(&alice, &room).await?.ok()?;
    let path = myelin(&format!("/rooms/{}/meeting.ics", enc(&room)));
    let url = format!("{}{path}", server.base);
    let resp = http_client(Duration::from_secs(30))
        .get(&url)
        .bearer_auth(alice.token.as_deref().unwrap_or_default())
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/calendar"), "{content_type}");
    let ics = resp.text().await?;
    let again = alice.request(Method::GET, &path, None).await?;
    assert_eq!(again.status, 200);

    // Non-members get nothing.
    bob.request(Method::GET, &path, None)
        .await?
        .expect_error(403, "M_FORBIDDEN")?;

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("meeting.ics");
    std::fs::write(&file, &ics)?;
    let script = r#"
import json, sys
from icalendar import Calendar
cal = Calendar.from_ical(open(sys.argv[1], 'rb').read())
events = list(cal.walk('VEVENT'))
assert len(events) == 1, events
e = events[0]
print(json.dumps({
    "uid": str(e['UID']),
    "start": e.decoded('DTSTART').isoformat(),
    "end": e.decoded('DTEND').isoformat(),
    "summary": str(e['SUMMARY']),
    "description": str(e['DESCRIPTION']),
    "url": str(e['URL']),
    "location": str(e['LOCATION']),
    "rrule": e['RRULE'].to_ical().decode(),
}))
"#;
    let mut cmd = std::process::Command::new(python);
    cmd.arg("-c").arg(script).arg(&file);
    let out = run_program(cmd, Duration::from_secs(60)).await?;
    assert!(
        out.status.success(),
        "icalendar failed: {}\n{ics}",
        out.stderr
    );
    let parsed: Value = serde_json::from_str(out.stdout.trim()).context(out.stdout.clone())?;
    assert_eq!(parsed["start"], "2030-01-07T09:00:00+00:00", "{parsed}");
    assert_eq!(parsed["end"], "2030-01-07T10:00:00+00:00", "{parsed}");
    assert_eq!(parsed["summary"], "Weekly sync");
    assert_eq!(parsed["description"], "Agenda, notes; more");
    assert_eq!(parsed["url"], link["url"]);
    assert_eq!(parsed["location"], link["url"]);
    assert_eq!(parsed["rrule"], "FREQ=WEEKLY;BYDAY=MO");
    // The UID is stable per room.
    assert!(again
        .text
        .contains(&format!("UID:{}", parsed["uid"].as_str().unwrap_or("?"))));

    // A room without a schedule has no calendar entry.
    let plain = create_virtual_room(&alice, "Unscheduled", json!({})).await?;
    alice
        .request(
            Method::GET,
            &myelin(&format!("/rooms/{}/meeting.ics", enc(&plain))),
            None,
        )
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}

#[tokio::test]
async fn the_personal_room_is_created_once_and_in_the_profile() -> anyhow::Result<()> {
    let server = server().await?;
    let alice = server.register("alice").await?;
    let first = alice
        .request(Method::POST, &myelin("/personal_room"), Some(&json!({})))
        .await?
        .ok()?;
    let second = alice
        .request(Method::POST, &myelin("/personal_room"), Some(&json!({})))
        .await?
        .ok()?;
    assert_eq!(first, second);
    let room = first["room_id"].as_str().context("room_id")?;
    let token = first["token"].as_str().context("token")?;
    assert_eq!(first["url"], format!("{}/meet/{token}", server.base));
    let create = alice
        .get(&format!("/rooms/{}/state/m.room.create/", enc(room)))
        .await?
        .ok()?;
    assert_eq!(create["type"], VIRTUAL_ROOM);
    let lobby_view = lobby(&server, token).await?.ok()?;
    assert_eq!(lobby_view["room_id"], room);
    assert_eq!(lobby_view["name"], "alice's meeting room");

    // The link is in Alice's profile, for her contacts to copy.
    let bob = server.register("bob").await?;
    bob.get(&format!(
        "/profile/{}/io.myelin.meeting_link",
        enc(&bob.user_id)
    ))
    .await?
    .expect_error(404, "M_NOT_FOUND")?;
    let profile = bob
        .get(&format!("/profile/{}", enc(&alice.user_id)))
        .await?
        .ok()?;
    assert_eq!(profile["io.myelin.meeting_link"], first["url"], "{profile}");
    assert_eq!(profile["displayname"], "alice");
    let field = bob
        .get(&format!(
            "/profile/{}/io.myelin.meeting_link",
            enc(&alice.user_id)
        ))
        .await?
        .ok()?;
    assert_eq!(field, json!({"io.myelin.meeting_link": first["url"]}));
    Ok(())
}
