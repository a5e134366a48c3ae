//! Myelin Meet, the page a join link opens (`GET /meet/{token}`): how it is served (cache
//! headers, a strict Content-Security-Policy, 404 for an unknown or revoked link), and a
//! meeting in three headless Chromium pages (`spec-tests/call/meet.mjs`, driven with
//! playwright-core only through the page's `data-testid` hooks): two guests by link and a
//! signed-in moderator see each other's video, chat both ways, see mute-all and text mute
//! take effect, and the guests are gone from the room afterwards (one leaves, one is
//! removed by the moderator); and a guest on the page in one call with a livekit-client
//! member (Element Call's engine), whose page joins the SFU again when asked to reconnect
//! (a test failpoint makes the SFU lose one of her streams), and who leaves by closing the
//! tab; and a recorded meeting:
//! the moderator records a guest and herself for about ten seconds with the page's record
//! button (the real `myelin-recorder`), both pages show the red dot, the recorder stays
//! hidden, and the posted `m.video` is a WebM file that `ffprobe` reads as one VP8 video
//! and one Opus audio stream of 8–12 s.
//!
//! Screenshots of the lobby and the three-person grid land in a temporary directory, or in
//! `MYELIN_MEET_SCREENSHOTS` when set (README: `docs/meet-lobby.png`, `docs/meet-grid.png`).

mod kinds_common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use kinds_common::{create_virtual_room, myelin};
use reqwest::Method;
use serde_json::{json, Value};
use spec_tests::{
    browser_driver_dir, chromium, enc, http_client, run_browser_driver, run_program,
    workspace_binary, Client, TestServer,
};

/// A moderator's join link for `room`: (token, url).
async fn join_link(c: &Client, room: &str) -> anyhow::Result<(String, String)> {
    let link = c
        .request(
            Method::POST,
            &myelin(&format!("/rooms/{}/join_link", enc(room))),
            Some(&json!({})),
        )
        .await?
        .ok()?;
    Ok((
        link["token"].as_str().context("token")?.to_owned(),
        link["url"].as_str().context("url")?.to_owned(),
    ))
}

/// A user's membership in `room`, as the room's state says.
async fn membership(c: &Client, room: &str, user: &str) -> anyhow::Result<Option<String>> {
    let member = c
        .get(&format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(room),
            enc(user)
        ))
        .await?;
    Ok(member.body["membership"].as_str().map(str::to_owned))
}

/// The names of the steps a driver summary lists.
fn step_names(summary: &Value) -> anyhow::Result<Vec<&str>> {
    Ok(summary["steps"]
        .as_array()
        .context("steps")?
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect())
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy_and_404_for_unknown_links() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let room = create_virtual_room(&alice, "Weekly sync", json!({})).await?;
    let (token, url) = join_link(&alice, &room).await?;
    assert_eq!(url, format!("{}/meet/{token}", server.base));
    let http = http_client(Duration::from_secs(30));

    let page = http.get(&url).send().await?;
    assert_eq!(page.status(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    assert_eq!(header("cache-control"), "no-cache");
    let policy = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        // The SFU's signalling WebSocket (the embedded SFU's default address).
        "ws://127.0.0.1:7880",
    ] {
        assert!(policy.contains(directive), "{directive} not in {policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    let html = page.text().await?;
    // Every hook a browser test drives is on the page.
    for hook in [
        "display-name",
        "sign-in",
        "camera-select",
        "mic-select",
        "speaker-select",
        "preview",
        "mic-level",
        "join",
        "mute",
        "camera",
        "screen-share",
        "leave",
        "chat-input",
        "chat-send",
        "mute-all",
        "text-mute",
        "copy-link",
        "participant-list",
        "recording-indicator",
        "record",
    ] {
        assert!(
            html.contains(&format!("data-testid=\"{hook}\"")),
            "no {hook} hook"
        );
    }
    // Tiles and chat messages are made by the scripts, with their hooks.
    for (script, hook) in [("grid.js", "tile"), ("panel.js", "chat-message")] {
        let text = http
            .get(format!("{}/meet/assets/{script}", server.base))
            .send()
            .await?
            .text()
            .await?;
        assert!(
            text.contains(&format!("dataset.testid = '{hook}'")),
            "{script} makes no {hook}"
        );
    }

    // The stylesheet and the entry module, with the version the page names: cached for
    // good, and the modules they import carry the same version.
    let version = html
        .split("/meet/assets/meet.js?v=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("no versioned meet.js in the page")?
        .to_owned();
    assert_eq!(version.len(), 16, "{version}");
    for (asset, kind) in [("meet.js", "text/javascript"), ("meet.css", "text/css")] {
        let response = http
            .get(format!("{}/meet/assets/{asset}?v={version}", server.base))
            .send()
            .await?;
        assert_eq!(response.status(), 200, "{asset}");
        let headers = response.headers().clone();
        assert!(headers["content-type"].to_str()?.starts_with(kind));
        assert_eq!(
            headers["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let body = response.text().await?;
        assert!(!body.contains("{{version}}"), "{asset}");
        if asset == "meet.js" {
            assert!(body.contains(&format!("./matrix.js?v={version}")));
        }
    }
    // Without the version (or with an old one): revalidated every time.
    let stale = http
        .get(format!("{}/meet/assets/meet.js?v=0", server.base))
        .send()
        .await?;
    assert_eq!(stale.headers()["cache-control"], "no-cache");
    let missing = http
        .get(format!("{}/meet/assets/nothing.js", server.base))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await?["errcode"], "M_NOT_FOUND");

    // An unknown link, and the real one once revoked: 404 with a page saying so.
    let unknown = http
        .get(format!("{}/meet/not-a-token", server.base))
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);
    assert!(unknown.text().await?.contains("not valid"));
    alice
        .request(
            Method::DELETE,
            &myelin(&format!("/rooms/{}/join_link", enc(&room))),
            None,
        )
        .await?
        .ok()?;
    assert_eq!(http.get(&url).send().await?.status(), 404);
    Ok(())
}

#[tokio::test]
async fn two_guests_and_a_member_meet_on_the_page() -> anyhow::Result<()> {
    let started = Instant::now();
    browser_driver_dir()?;
    let chromium = chromium()?;
    let (server, _) = TestServer::start_with_sfu(&[
        ("MYELIN_MEETINGS_TEMPORARY_IDLE_SECS", "60"),
        (
            "RUST_LOG",
            "info,ruma_state_res=warn,myelin_sfu=debug,webrtc=warn,webrtc_ice=error,\
             webrtc_srtp=warn,webrtc_sctp=warn,webrtc_data=warn,dtls=error",
        ),
    ])
    .await?;
    let mia = server.register("mia").await?;
    let room = create_virtual_room(&mia, "Design review", json!({"topic": "Q1 mockups"})).await?;
    let (_, url) = join_link(&mia, &room).await?;

    let screenshots = match std::env::var_os("MYELIN_MEET_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir),
        None => server.data_dir().join("screenshots"),
    };
    let config = json!({
        "chromium": chromium,
        "joinUrl": url,
        "roomName": "Design review",
        "member": {"user": "mia", "password": "mia-password", "userId": mia.user_id},
        "screenshots": screenshots,
    });
    let summary = run_browser_driver(
        &server,
        "meet.mjs",
        "MYELIN_MEET_CONFIG",
        &config,
        "meeting page",
    )
    .await?;
    let steps = step_names(&summary)?;
    for expected in [
        "lobby shows the room, the preview and the microphone level",
        "joining without a name asks for one",
        "two guests and the member joined",
        "grace sees the two others' video",
        "gus sees the two others' video",
        "member sees the two others' video",
        "the active speaker is highlighted",
        "chat messages arrive both ways",
        "the participant list marks the guests temporary",
        "moderator controls show for the moderator only",
        "text mute disables the guests' composer and back",
        "mute-all shows both guests muted on every page, not the moderator",
        "muted guests stop being highlighted as speakers",
        "a guest leaves and his tile goes",
        "the moderator removes a guest and her tile goes",
        "the member leaves",
    ] {
        assert!(
            steps.contains(&expected),
            "missing step {expected}: {steps:?}"
        );
    }
    for shot in ["meet-lobby.png", "meet-grid.png"] {
        let bytes = std::fs::read(screenshots.join(shot)).with_context(|| shot.to_owned())?;
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{shot}"
        );
    }

    // The guests are out of the room: one left (the page withdrew his call membership and
    // the server let the temporary participant go), the other was removed by the
    // moderator. The member joined the room for good.
    let grace = summary["users"]["grace"].as_str().context("grace")?;
    let gus = summary["users"]["gus"].as_str().context("gus")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = [
            membership(&mia, &room, grace).await?,
            membership(&mia, &room, gus).await?,
        ];
        if left.iter().all(|m| m.as_deref() == Some("leave")) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the guests are still in the room: {left:?}\n{}",
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        membership(&mia, &room, &mia.user_id).await?.as_deref(),
        Some("join")
    );
    for step in summary["steps"].as_array().into_iter().flatten() {
        let at = step["atMs"].as_u64().unwrap_or(0);
        eprintln!("{at:>6} ms  {}", step["name"].as_str().unwrap_or(""));
    }
    eprintln!(
        "{} (driver {} ms); meeting page test passed in {:.1?}",
        summary["browser"],
        summary["durationMs"],
        started.elapsed()
    );
    Ok(())
}

/// Element Call's side: a guest on the page and a member running livekit-client (the
/// library Element Call is built on, joining as Element Call does: call membership, OpenID
/// token, `/sfu/get`) are in one call and see and hear each other.
#[tokio::test]
async fn a_guest_on_the_page_and_a_livekit_client_member_share_the_call() -> anyhow::Result<()> {
    browser_driver_dir()?;
    let chromium = chromium()?;
    let (server, _) = TestServer::start_with_sfu(&[(
        "RUST_LOG",
        "info,ruma_state_res=warn,myelin_sfu=debug,webrtc=warn,webrtc_ice=error,\
         webrtc_srtp=warn,webrtc_sctp=warn,webrtc_data=warn,dtls=error",
    )])
    .await?;
    let mia = server.register("mia").await?;
    let leo = server.register("leo").await?;
    let room = create_virtual_room(&mia, "Standup", json!({"invite": [leo.user_id]})).await?;
    leo.join(&room).await?;
    let (_, url) = join_link(&mia, &room).await?;
    let service_url = server.base.clone();
    let key = format!("_{}_{}_m.call", leo.user_id, leo.device_id);
    leo.set_state(
        &room,
        "org.matrix.msc3401.call.member",
        &key,
        json!({
            "application": "m.call", "call_id": "", "scope": "m.room",
            "device_id": leo.device_id, "expires": 3_600_000,
            "focus_active": {"type": "livekit", "focus_selection": "oldest_membership"},
            "foci_preferred": [{"type": "livekit", "livekit_alias": room,
                                "livekit_service_url": service_url}],
        }),
    )
    .await?
    .ok()?;
    let config = json!({
        "scenario": "livekit",
        "chromium": chromium,
        "joinUrl": url,
        "roomId": room,
        "serviceUrl": service_url,
        "leo": {"userId": leo.user_id, "deviceId": leo.device_id,
                "openidToken": leo.openid_token().await?},
    });
    let summary = run_browser_driver(
        &server,
        "meet.mjs",
        "MYELIN_MEET_CONFIG",
        &config,
        "page + livekit-client",
    )
    .await?;
    let steps = step_names(&summary)?;
    for expected in [
        "a guest on the page and a livekit-client member joined",
        "the page shows and plays the livekit-client member",
        "the livekit-client member receives the guest's audio and video",
        "a livekit-client mute shows on the page",
        "the SFU asks the page to reconnect and the call goes on",
        "the guest closes the tab and livekit-client sees her go",
    ] {
        assert!(
            steps.contains(&expected),
            "missing step {expected}: {steps:?}"
        );
    }
    // The closed tab sent its scheduled withdrawal of the call membership (or, at the
    // latest, it fired 20 s later): the server let the temporary participant go.
    let gina = summary["users"]["gina"].as_str().context("gina")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while membership(&mia, &room, gina).await?.as_deref() != Some("leave") {
        if Instant::now() > deadline {
            bail!("the guest is still in the room\n{}", server.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// `ffprobe`'s view of a media file: its streams and the container's duration.
async fn ffprobe(file: &Path) -> anyhow::Result<Value> {
    let ffprobe = std::env::var("MYELIN_FFPROBE").unwrap_or_else(|_| "ffprobe".into());
    let mut cmd = std::process::Command::new(&ffprobe);
    cmd.args([
        "-v",
        "error",
        "-print_format",
        "json",
        "-show_format",
        "-show_streams",
    ])
    .arg(file);
    let out = run_program(cmd, Duration::from_secs(60))
        .await
        .with_context(|| {
            format!("running {ffprobe} (Debian's ffmpeg; spec-tests/run installs it)")
        })?;
    if !out.status.success() {
        bail!("ffprobe failed on {}: {}", file.display(), out.stderr);
    }
    serde_json::from_str(&out.stdout).with_context(|| format!("ffprobe output: {}", out.stdout))
}

#[tokio::test]
async fn a_moderator_records_the_meeting_and_the_video_is_posted() -> anyhow::Result<()> {
    browser_driver_dir()?;
    let chromium = chromium()?;
    let recorder = workspace_binary("MYELIN_RECORDER_BIN", "myelin-recorder");
    if !recorder.exists() {
        bail!(
            "{} not found: build it with `cargo build --workspace --bins` (spec-tests/run does)",
            recorder.display()
        );
    }
    let recorder = recorder.to_str().context("recorder path")?.to_owned();
    let (server, _) = TestServer::start_with_sfu(&[
        ("MYELIN_RTC_RECORDER", recorder.as_str()),
        (
            "RUST_LOG",
            "info,ruma_state_res=warn,webrtc=warn,webrtc_ice=error,webrtc_srtp=warn,\
             webrtc_sctp=warn,webrtc_data=warn,dtls=error",
        ),
    ])
    .await?;
    let mia = server.register("mia").await?;
    let room = create_virtual_room(&mia, "Board meeting", json!({})).await?;
    let (_, url) = join_link(&mia, &room).await?;
    let config = json!({
        "scenario": "recording",
        "chromium": chromium,
        "joinUrl": url,
        "member": {"user": "mia", "password": "mia-password", "userId": mia.user_id},
        "recordMs": 10_000,
    });
    let summary = run_browser_driver(
        &server,
        "meet.mjs",
        "MYELIN_MEET_CONFIG",
        &config,
        "recording",
    )
    .await?;
    let steps = step_names(&summary)?;
    for expected in [
        "a guest and the moderator see each other",
        "the moderator starts recording and both pages show the dot",
        "the recorder stays hidden",
        "the moderator stops recording and the dot goes",
    ] {
        assert!(
            steps.contains(&expected),
            "missing step {expected}: {steps:?}"
        );
    }

    // The recording is posted in the room by the moderator who started it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let video = loop {
        let page = mia
            .get(&format!("/rooms/{}/messages?dir=b&limit=50", enc(&room)))
            .await?
            .ok()?;
        let found = page["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["content"]["msgtype"] == "m.video")
            .cloned();
        if let Some(video) = found {
            break video;
        }
        let state = mia
            .get(&format!("/rooms/{}/state/io.myelin.recording/", enc(&room)))
            .await?;
        if state.body.get("error").is_some() || Instant::now() > deadline {
            bail!(
                "no recording was posted; recording state: {}\nserver log:\n{}",
                state.text,
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(video["sender"], mia.user_id.as_str(), "{video}");
    let content = &video["content"];
    assert_eq!(content["info"]["mimetype"], "video/webm", "{content}");
    let mxc = content["url"].as_str().context("url")?;
    let download = http_client(Duration::from_secs(60))
        .get(format!(
            "{}/_matrix/client/v1/media/download/{}",
            server.base,
            mxc.trim_start_matches("mxc://")
        ))
        .bearer_auth(mia.token.as_deref().context("token")?)
        .send()
        .await?;
    assert_eq!(download.status(), 200);
    let bytes = download.bytes().await?;
    assert_eq!(
        content["info"]["size"].as_u64(),
        Some(bytes.len() as u64),
        "{content}"
    );
    let file = server.data_dir().join("recording.webm");
    std::fs::write(&file, &bytes)?;
    let probe = ffprobe(&file).await?;
    let streams = probe["streams"].as_array().context("streams")?;
    let of = |kind: &str| {
        streams
            .iter()
            .filter(|s| s["codec_type"] == kind)
            .collect::<Vec<_>>()
    };
    let (video_streams, audio_streams) = (of("video"), of("audio"));
    assert_eq!(video_streams.len(), 1, "{probe}");
    assert_eq!(audio_streams.len(), 1, "{probe}");
    assert_eq!(video_streams[0]["codec_name"], "vp8", "{probe}");
    assert_eq!(audio_streams[0]["codec_name"], "opus", "{probe}");
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .with_context(|| format!("duration: {probe}"))?;
    // The page asks for 10 s; the stop goes through the browser, the server and the
    // recorder, each of which can lag by a second or two on a busy 2-core machine.
    assert!(
        (8.0..=15.0).contains(&duration),
        "recorded {duration} s, expected 8-15 s: {probe}"
    );
    let state = mia
        .get(&format!("/rooms/{}/state/io.myelin.recording/", enc(&room)))
        .await?
        .ok()?;
    assert_eq!(state["active"], false, "{state}");
    assert!(state.get("error").is_none(), "{state}");
    Ok(())
}
