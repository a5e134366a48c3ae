//! Interop check of Myelin with matrix-rust-sdk (the SDK under Element X).
//!
//! Usage: `myelin-sdk-interop BASE_URL [--media] [--verify] [--recover] [--share-history]`
//!
//! Two users (registered over plain HTTP) log in with matrix-sdk, which discovers native
//! simplified sliding sync from `/versions`; each runs matrix-sdk-ui's `SyncService`
//! (the `RoomListService` plus the encryption sync). Alice creates an encrypted DM with
//! Bob, Bob joins, and messages go both ways and must decrypt on the other side, with the
//! keys exchanged through the server. With `--media`, a file is uploaded, downloaded
//! through authenticated media and a PNG thumbnail is fetched. With `--verify`, both set
//! up cross-signing and verify each other interactively (an in-room request in the DM,
//! SAS with emoji, both confirm) until each sees the other's identity as verified. With
//! `--recover`, Alice enables recovery (secret storage and key backup), then a new device
//! of hers recovers with the recovery key and must decrypt the DM's earlier messages from
//! the backup (as Element X: keys fetched after a decryption failure), in the live,
//! permalink, thread and pinned-events timelines. With `--share-history` (MSC4268, the
//! clients built with `share_history_on_invite`), Alice sets up cross-signing, writes in
//! an encrypted room with shared history, invites Charlie — her client uploads a key
//! bundle to the media repository and sends it to Charlie's device — and Charlie, once
//! joined, must decrypt what was said before he came. Exits non-zero on any failure;
//! every wait is bounded.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use matrix_sdk::{
    config::SyncSettings,
    media::{MediaFormat, MediaRequestParameters, MediaThumbnailSettings},
    ruma::{
        api::client::room::create_room,
        events::relation::Thread,
        events::room::{
            message::{Relation, RoomMessageEventContent},
            pinned_events::RoomPinnedEventsEventContent,
            MediaSource,
        },
        events::{room::encryption::RoomEncryptionEventContent, InitialStateEvent},
        OwnedRoomId, OwnedUserId, RoomId, UInt,
    },
    sliding_sync::VersionBuilder,
    Client, RoomState,
};
use matrix_sdk_ui::{
    room_list_service::RoomListLoadingState,
    sync_service::SyncService,
    timeline::{RoomExt, Timeline, TimelineEventFocusThreadMode, TimelineFocus},
};
use serde_json::{json, Value};

/// How long any one awaited state may take: more than one long poll (30 s) of the
/// syncs, so a step that misses one still arrives on the next.
const WAIT: Duration = Duration::from_secs(90);

/// POSTs `body`, waiting and trying again while registration's rate limit says so (as a
/// client does); the answer's status and JSON.
async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<(reqwest::StatusCode, Value)> {
    let mut tries = 0;
    loop {
        let response = http.post(url).json(body).send().await?;
        let status = response.status();
        let json: Value = response.json().await.unwrap_or(Value::Null);
        match json["retry_after_ms"].as_u64() {
            Some(ms) if json["errcode"] == "M_LIMIT_EXCEEDED" && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(ms.min(10_000))).await;
            }
            _ => return Ok((status, json)),
        }
    }
}

async fn register(base: &str, name: &str) -> Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{base}/_matrix/client/v3/register");
    let password = format!("{name}-password");
    let (_, first) = post_json(
        &http,
        &url,
        &json!({"username": name, "password": password}),
    )
    .await?;
    let session = first["session"]
        .as_str()
        .ok_or_else(|| anyhow!("no UIA session: {first}"))?;
    let (status, done) = post_json(
        &http,
        &url,
        &json!({"username": name, "password": password,
                "auth": {"type": "m.login.dummy", "session": session}}),
    )
    .await?;
    ensure!(status.is_success(), "register {name}: {done}");
    Ok(())
}

async fn login(base: &str, name: &str, share_history: bool) -> Result<Client> {
    login_with(base, name, Default::default(), share_history).await
}

async fn login_with(
    base: &str,
    name: &str,
    settings: matrix_sdk::encryption::EncryptionSettings,
    share_history: bool,
) -> Result<Client> {
    let client = Client::builder()
        .homeserver_url(base)
        .with_encryption_settings(settings)
        .with_enable_share_history_on_invite(share_history)
        .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
        .build()
        .await
        .context("building the client (native sliding sync must be discovered)")?;
    client
        .matrix_auth()
        .login_username(name, &format!("{name}-password"))
        .initial_device_display_name(&format!("{name} sdk"))
        .send()
        .await
        .with_context(|| format!("login {name}"))?;
    Ok(client)
}

/// Polls `check` every 100 ms until it yields a value or `WAIT` passes.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the room list (sliding sync) has loaded at least `rooms` rooms.
async fn wait_room_list(sync: &SyncService, rooms: u32, who: &str) -> Result<()> {
    let list = sync.room_list_service().all_rooms().await?;
    let state = list.loading_state();
    wait_for(&format!("{who}'s room list to hold {rooms} rooms"), || {
        let current = state.get();
        async move {
            Ok(match current {
                RoomListLoadingState::Loaded {
                    maximum_number_of_rooms: Some(n),
                } if n >= rooms => Some(()),
                _ => None,
            })
        }
    })
    .await
}

/// Waits for a decrypted text message with `body` from `sender` in a timeline.
async fn wait_decrypted(
    timeline: &Timeline,
    body: &str,
    sender: &OwnedUserId,
    who: &str,
) -> Result<()> {
    let waited = wait_for(&format!("{who} to decrypt {body:?}"), || async {
        for item in timeline.items().await {
            let Some(event) = item.as_event() else {
                continue;
            };
            if event.sender() != sender {
                continue;
            }
            let content = event.content();
            if content.is_unable_to_decrypt() {
                continue;
            }
            if let Some(msg) = content.as_message() {
                if msg.body() == body {
                    ensure!(
                        event.encryption_info().is_some(),
                        "{body:?} arrived unencrypted in an encrypted room"
                    );
                    return Ok(Some(()));
                }
            }
        }
        Ok(None)
    })
    .await;
    if waited.is_err() {
        // Say what the timeline holds instead, to tell a missing event from a UTD.
        let seen: Vec<String> = timeline
            .items()
            .await
            .iter()
            .filter_map(|i| i.as_event())
            .map(|e| {
                let content = e.content();
                let what = match content.as_message() {
                    Some(m) => format!("{:?}", m.body()),
                    None if content.is_unable_to_decrypt() => "unable to decrypt".to_owned(),
                    None => "other".to_owned(),
                };
                format!("{} {:?}: {what}", e.sender(), e.event_id())
            })
            .collect();
        eprintln!("{who}'s timeline holds: {seen:#?}");
    }
    waited
}

/// matrix-sdk sends the steps it takes by itself in a verification (its SAS key after the
/// other's accept, its "done" after the other's MAC) only when its encryption sync starts
/// a request, and that sync's long poll ends only when the server has something for it
/// (to-device messages, device-list changes) — in-room verification events reach the
/// room-list sync instead. On an otherwise idle server each such step waits up to the
/// 30 s long poll, and two in a row can pass the SDK's one-minute step timeout (as with
/// any homeserver). A client in real use gets to-device traffic; here each side sends the
/// other an inert custom to-device event every 2 s while the verification runs, so every
/// encryption sync ends, and sends what it has queued, within about 2 s. Stops when the
/// returned handle is aborted.
fn keep_encryption_syncs_moving(
    base: &str,
    alice: &Client,
    bob: &Client,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut senders = Vec::new();
    for (from, to) in [(alice, bob), (bob, alice)] {
        let token = from.access_token().context("access token")?;
        let to = to.user_id().context("user id")?.to_string();
        senders.push((token, to));
    }
    let base = base.trim_end_matches('/').to_owned();
    Ok(tokio::spawn(async move {
        let http = reqwest::Client::new();
        for round in 0u64.. {
            for (i, (token, to)) in senders.iter().enumerate() {
                let url = format!(
                    "{base}/_matrix/client/v3/sendToDevice/org.myelin.test.nudge/nudge-{i}-{round}"
                );
                let body = json!({ "messages": { to: { "*": { "round": round } } } });
                // A lost nudge only means a slower step: the verification itself decides.
                let _ = http.put(&url).bearer_auth(token).json(&body).send().await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }))
}

/// One side of the verification: the client, its sync service and its DM timeline.
type Side<'a> = (&'a Client, &'a SyncService, &'a Timeline);

/// Cross-signing for both, then Alice verifies Bob with SAS emoji through their DM; both
/// confirm, and each must then see the other's identity as verified. Both have the DM
/// open (subscribed, as Element X does for the room on screen), so an incremental sync
/// carries all of the verification's room events rather than the list's one-event
/// preview; to-device nudges keep the SDK's own steps from waiting on the long poll.
async fn check_verification(
    base: &str,
    alice: Side<'_>,
    bob: Side<'_>,
    dm_id: &RoomId,
) -> Result<()> {
    alice
        .1
        .room_list_service()
        .subscribe_to_rooms(&[dm_id])
        .await;
    bob.1.room_list_service().subscribe_to_rooms(&[dm_id]).await;
    let nudges = keep_encryption_syncs_moving(base, alice.0, bob.0)?;
    let checked = verify_with_sas(alice, bob).await;
    nudges.abort();
    checked
}

async fn verify_with_sas((alice, _, alice_tl): Side<'_>, (bob, _, bob_tl): Side<'_>) -> Result<()> {
    let alice_id = alice.user_id().context("alice id")?.to_owned();
    let bob_id = bob.user_id().context("bob id")?.to_owned();
    for c in [alice, bob] {
        c.encryption()
            .bootstrap_cross_signing(None)
            .await
            .context("bootstrap cross-signing (first upload, no UIA)")?;
    }
    let bob_identity = wait_for("alice to fetch bob's identity", || async {
        Ok(alice.encryption().request_user_identity(&bob_id).await?)
    })
    .await?;
    wait_for("bob to fetch alice's identity", || async {
        Ok(bob.encryption().request_user_identity(&alice_id).await?)
    })
    .await?;
    // Cross-signing changed what each knows of the other's devices, so each side's next
    // message starts a new room-key session. The verification's events are encrypted
    // in the DM, and matrix-sdk hands a room event to its verification machine only when
    // it decrypts as it arrives: its room-list sync must not beat the room key on the
    // encryption sync (a later re-decryption reaches the timeline, not the verification).
    // One message each way first, decrypted on the other side, so the keys are there.
    alice_tl
        .send(RoomMessageEventContent::text_plain("let's verify each other").into())
        .await?;
    wait_decrypted(bob_tl, "let's verify each other", &alice_id, "bob").await?;
    bob_tl
        .send(RoomMessageEventContent::text_plain("sure, go ahead").into())
        .await?;
    wait_decrypted(alice_tl, "sure, go ahead", &bob_id, "alice").await?;
    let request = bob_identity
        .request_verification()
        .await
        .context("alice requests verification")?;
    let flow_id = request.flow_id().to_owned();
    let bob_request = wait_for("bob to receive the verification request", || async {
        Ok(bob
            .encryption()
            .get_verification_request(&alice_id, &flow_id)
            .await)
    })
    .await?;
    bob_request.accept().await.context("bob accepts")?;
    wait_for("alice to see the request ready", || async {
        ensure!(
            !request.is_cancelled(),
            "cancelled: {:?}",
            request.cancel_info()
        );
        Ok(request.is_ready().then_some(()))
    })
    .await?;
    let alice_sas = request
        .start_sas()
        .await
        .context("alice starts SAS")?
        .context("no SAS started")?;
    let bob_sas = wait_for("bob to see the SAS start", || async {
        Ok(bob
            .encryption()
            .get_verification(&alice_id, &flow_id)
            .await
            .and_then(|v| v.sas()))
    })
    .await?;
    bob_sas.accept().await.context("bob accepts SAS")?;
    for (sas, who) in [(&alice_sas, "alice"), (&bob_sas, "bob")] {
        wait_for(&format!("{who} to have emoji to show"), || async {
            ensure!(
                !sas.is_cancelled(),
                "{who}: cancelled: {:?}",
                sas.cancel_info()
            );
            Ok(sas.can_be_presented().then_some(()))
        })
        .await?;
    }
    let symbols = |sas: &matrix_sdk::encryption::verification::SasVerification| {
        sas.emoji()
            .map(|e| e.iter().map(|e| e.symbol).collect::<Vec<_>>())
    };
    let shown = symbols(&alice_sas).context("alice's emoji")?;
    ensure!(
        Some(&shown) == symbols(&bob_sas).as_ref(),
        "the two sides show different emoji"
    );
    alice_sas.confirm().await.context("alice confirms")?;
    bob_sas.confirm().await.context("bob confirms")?;
    for (sas, who) in [(&alice_sas, "alice"), (&bob_sas, "bob")] {
        wait_for(&format!("{who}'s SAS to be done"), || async {
            ensure!(
                !sas.is_cancelled(),
                "{who}: cancelled: {:?}",
                sas.cancel_info()
            );
            Ok(sas.is_done().then_some(()))
        })
        .await?;
    }
    for (viewer, other, who) in [(alice, &bob_id, "alice"), (bob, &alice_id, "bob")] {
        wait_for(&format!("{who} to see {other} verified"), || async {
            Ok(viewer
                .encryption()
                .get_user_identity(other)
                .await?
                .filter(|i| i.is_verified())
                .map(|_| ()))
        })
        .await?;
    }
    // What the server holds: the other's signature on each master key, as queried again.
    for (viewer, other, who) in [(alice, &bob_id, "alice"), (bob, &alice_id, "bob")] {
        let identity = viewer
            .encryption()
            .request_user_identity(other)
            .await?
            .with_context(|| format!("{who}: {other}'s identity from the server"))?;
        ensure!(
            identity.is_verified(),
            "{who}: {other} is not verified after a fresh /keys/query"
        );
    }
    Ok(())
}

/// Alice enables recovery; a new device of hers recovers with the key and decrypts the
/// DM's earlier messages (hers and Bob's) from the server-side key backup.
async fn check_recovery(
    base: &str,
    alice: &Client,
    dm_id: &RoomId,
    bob_id: &OwnedUserId,
) -> Result<()> {
    let alice_id = alice.user_id().context("alice id")?.to_owned();
    // Before recovery is enabled: a threaded reply to Alice's first message and Bob's
    // reply pinned, so their keys go to the backup with the others.
    let room = alice.get_room(dm_id).context("alice's DM")?;
    let live = room.timeline().await?;
    let find = |body: &'static str| {
        let live = &live;
        async move {
            live.items()
                .await
                .iter()
                .filter_map(|i| i.as_event())
                .find(|e| e.content().as_message().is_some_and(|m| m.body() == body))
                .and_then(|e| e.event_id().map(ToOwned::to_owned))
                .with_context(|| format!("{body:?} has an event id"))
        }
    };
    let root = find("hello bob, this is encrypted").await?;
    let reply = find("hi alice, decrypted fine").await?;
    let mut in_thread = RoomMessageEventContent::text_plain("a reply in the thread");
    in_thread.relates_to = Some(Relation::Thread(Thread::plain(root.clone(), root.clone())));
    room.send(in_thread).await.context("threaded reply")?;
    room.send_state_event(RoomPinnedEventsEventContent::new(vec![reply.clone()]))
        .await
        .context("pin bob's reply")?;
    let key = alice
        .encryption()
        .recovery()
        .enable()
        .wait_for_backups_to_upload()
        .await
        .context("enable recovery")?;
    println!("alice enabled recovery; backups uploaded");
    let settings = matrix_sdk::encryption::EncryptionSettings {
        backup_download_strategy:
            matrix_sdk::encryption::BackupDownloadStrategy::AfterDecryptionFailure,
        auto_enable_backups: true,
        ..Default::default()
    };
    let device = login_with(base, "alice", settings, false).await?;
    let sync = SyncService::builder(device.clone()).build().await?;
    sync.start().await;
    device
        .encryption()
        .recovery()
        .recover(&key)
        .await
        .context("recover with the recovery key")?;
    println!("alice's new device recovered");
    let room = wait_for("the DM on alice's new device", || {
        let device = device.clone();
        async move { Ok(device.get_room(dm_id)) }
    })
    .await?;
    let timeline = room.timeline().await?;
    timeline.paginate_backwards(50).await?;
    wait_decrypted(
        &timeline,
        "hello bob, this is encrypted",
        &alice_id,
        "alice's new device",
    )
    .await?;
    wait_decrypted(
        &timeline,
        "hi alice, decrypted fine",
        bob_id,
        "alice's new device",
    )
    .await?;
    // A permalink to Bob's reply (a timeline focused on it, read with /context) shows
    // it and the message before it decrypted as well.
    let target = timeline
        .items()
        .await
        .iter()
        .filter_map(|i| i.as_event())
        .find(|e| e.sender() == bob_id)
        .and_then(|e| e.event_id().map(ToOwned::to_owned))
        .context("bob's reply has an event id")?;
    let focused = room
        .timeline_builder()
        .with_focus(TimelineFocus::Event {
            target,
            num_context_events: 10,
            thread_mode: TimelineEventFocusThreadMode::Automatic {
                hide_threaded_events: false,
            },
        })
        .build()
        .await
        .context("a timeline focused on bob's reply")?;
    wait_decrypted(
        &focused,
        "hi alice, decrypted fine",
        bob_id,
        "the permalink",
    )
    .await?;
    wait_decrypted(
        &focused,
        "hello bob, this is encrypted",
        &alice_id,
        "the permalink",
    )
    .await?;
    println!("a permalink timeline decrypts around its event");
    // The thread (read with /relations) and the pinned events (read one by one with
    // /event) decrypt as well.
    let thread = room
        .timeline_builder()
        .with_focus(TimelineFocus::Thread {
            root_event_id: root,
        })
        .build()
        .await
        .context("a thread timeline")?;
    // A thread timeline starts from the SDK's cache; it reads the thread from the server
    // when paginated, as Element X does when a thread is opened.
    thread.paginate_backwards(20).await?;
    wait_decrypted(&thread, "a reply in the thread", &alice_id, "the thread").await?;
    println!("a thread timeline decrypts its replies");
    // Opening the room subscribes to it, which brings its pinned events' ids (Element X
    // does the same); the pinned timeline then fetches each event.
    sync.room_list_service().subscribe_to_rooms(&[dm_id]).await;
    wait_for("the pinned event ids on alice's new device", || {
        let room = room.clone();
        async move { Ok(room.pinned_event_ids().filter(|ids| !ids.is_empty())) }
    })
    .await?;
    let pinned = room
        .timeline_builder()
        .with_focus(TimelineFocus::PinnedEvents)
        .build()
        .await
        .context("the pinned events timeline")?;
    wait_decrypted(
        &pinned,
        "hi alice, decrypted fine",
        bob_id,
        "the pinned events",
    )
    .await?;
    println!("the pinned events timeline decrypts bob's pinned reply");
    sync.stop().await;
    Ok(())
}

/// MSC4268: Alice (cross-signed) writes in an encrypted room whose history is shared,
/// then invites Charlie; her client shares the room's keys with him in a bundle (an
/// encrypted file in the media repository, announced by a to-device message). Charlie
/// joins and must decrypt the message from before his invite.
async fn check_shared_history(base: &str, alice: &Client) -> Result<()> {
    let alice_id = alice.user_id().context("alice id")?.to_owned();
    alice
        .encryption()
        .bootstrap_cross_signing_if_needed(None)
        .await
        .context("alice's cross-signing")?;
    register(base, "charlie").await?;
    let charlie = login(base, "charlie", true).await?;
    let charlie_id = charlie.user_id().context("charlie id")?.to_owned();
    // History goes only to cross-signed devices (matrix-sdk refuses the all-devices
    // strategy for it).
    charlie
        .encryption()
        .bootstrap_cross_signing_if_needed(None)
        .await
        .context("charlie's cross-signing")?;
    let charlie_sync = SyncService::builder(charlie.clone()).build().await?;
    charlie_sync.start().await;

    let mut request = create_room::v3::Request::new();
    request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
    request.name = Some("History".to_owned());
    request.initial_state = vec![InitialStateEvent::with_empty_state_key(
        RoomEncryptionEventContent::with_recommended_defaults(),
    )
    .to_raw_any()];
    let room = alice.create_room(request).await.context("create room")?;
    let room_id = room.room_id().to_owned();
    wait_for("the history room to be encrypted for alice's SDK", || {
        let room = room.clone();
        async move {
            Ok(room
                .latest_encryption_state()
                .await?
                .is_encrypted()
                .then_some(()))
        }
    })
    .await?;
    let timeline = room.timeline().await?;
    let before = "said before charlie was invited";
    timeline
        .send(RoomMessageEventContent::text_plain(before).into())
        .await?;
    wait_for("alice's message to reach the server", || {
        let timeline = &timeline;
        async move {
            Ok(timeline
                .items()
                .await
                .iter()
                .filter_map(|i| i.as_event())
                .any(|e| e.is_remote_event() && e.content().as_message().is_some())
                .then_some(()))
        }
    })
    .await?;

    room.invite_user_by_id(&charlie_id)
        .await
        .context("alice invites charlie (sharing the history)")?;
    let invited = wait_for("charlie to see the invite", || {
        let charlie = charlie.clone();
        let room_id = room_id.clone();
        async move {
            Ok(charlie
                .get_room(&room_id)
                .filter(|r| r.state() == RoomState::Invited))
        }
    })
    .await?;
    invited.join().await.context("charlie joins")?;
    let charlie_room = charlie.get_room(&room_id).context("charlie's room")?;
    let charlie_tl = charlie_room.timeline().await?;
    // What was said before the join is history: the timeline pages back to it. The bundle
    // may be imported at the join or, if it arrives later, in the background.
    charlie_tl
        .paginate_backwards(20)
        .await
        .context("charlie pages back")?;
    let redecrypt = wait_decrypted(&charlie_tl, before, &alice_id, "charlie").await;
    charlie_sync.stop().await;
    redecrypt
}

async fn check_media(alice: &Client, bob: &Client) -> Result<()> {
    let data = b"Myelin media through matrix-sdk".to_vec();
    let uploaded = alice
        .media()
        .upload(&"text/plain".parse()?, data.clone(), None)
        .await
        .context("upload")?;
    let request = MediaRequestParameters {
        source: MediaSource::Plain(uploaded.content_uri.clone()),
        format: MediaFormat::File,
    };
    let downloaded = bob
        .media()
        .get_media_content(&request, false)
        .await
        .context("download through authenticated media")?;
    ensure!(downloaded == data, "downloaded bytes differ");

    // A 64×48 PNG, thumbnailed to fit 32×32.
    let png = tiny_png(64, 48);
    let uploaded = alice
        .media()
        .upload(&"image/png".parse()?, png, None)
        .await
        .context("upload png")?;
    let request = MediaRequestParameters {
        source: MediaSource::Plain(uploaded.content_uri),
        format: MediaFormat::Thumbnail(MediaThumbnailSettings::new(
            UInt::from(32u32),
            UInt::from(32u32),
        )),
    };
    let thumb = bob
        .media()
        .get_media_content(&request, false)
        .await
        .context("thumbnail")?;
    ensure!(
        thumb.starts_with(b"\x89PNG") || thumb.starts_with(&[0xFF, 0xD8]),
        "thumbnail is not an image"
    );
    Ok(())
}

/// An uncompressed (stored-deflate) RGB PNG of the given size, built by hand so the check
/// needs no image library.
fn tiny_png(width: u32, height: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &d in data {
            a = (a + u32::from(d)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            raw.extend_from_slice(&[(x * 4) as u8, (y * 5) as u8, 128]);
        }
    }
    let mut z = vec![0x78, 0x01];
    for (i, block) in raw.chunks(65_535).enumerate() {
        let last = (i + 1) * 65_535 >= raw.len();
        z.push(u8::from(last));
        z.extend_from_slice(&(block.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(block.len() as u16)).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

async fn run(base: &str, media: bool, verify: bool, recover: bool, share: bool) -> Result<()> {
    register(base, "alice").await?;
    register(base, "bob").await?;
    let alice = login(base, "alice", share).await?;
    let bob = login(base, "bob", share).await?;
    let alice_id = alice.user_id().context("alice id")?.to_owned();
    let bob_id = bob.user_id().context("bob id")?.to_owned();

    // A plain room first, so the room list has something before the DM exists.
    let lobby = alice
        .create_room(Default::default())
        .await
        .context("create lobby")?;
    let lobby_id: OwnedRoomId = lobby.room_id().to_owned();

    let alice_sync = SyncService::builder(alice.clone()).build().await?;
    let bob_sync = SyncService::builder(bob.clone()).build().await?;
    alice_sync.start().await;
    bob_sync.start().await;
    wait_room_list(&alice_sync, 1, "alice").await?;
    println!("alice's room list loaded over sliding sync");

    // Encrypted DM (matrix-sdk's create_dm turns encryption on).
    let dm = alice.create_dm(&bob_id).await.context("create_dm")?;
    let dm_id = dm.room_id().to_owned();
    // The SDK learns the encryption state from sync (or asks the server when it has
    // none yet): wait for it, bounded, rather than reading its cache once.
    wait_for("the DM to be encrypted for alice's SDK", || {
        let dm = dm.clone();
        async move {
            Ok(dm
                .latest_encryption_state()
                .await?
                .is_encrypted()
                .then_some(()))
        }
    })
    .await?;

    let invited = wait_for("bob to see the invite", || {
        let bob = bob.clone();
        let dm_id = dm_id.clone();
        async move {
            Ok(bob
                .get_room(&dm_id)
                .filter(|r| r.state() == RoomState::Invited))
        }
    })
    .await?;
    invited.join().await.context("bob joins the DM")?;
    wait_room_list(&bob_sync, 1, "bob").await?;
    wait_room_list(&alice_sync, 2, "alice").await?;
    alice_sync
        .room_list_service()
        .room(&dm_id)
        .context("DM in alice's room list")?;
    alice_sync
        .room_list_service()
        .room(&lobby_id)
        .context("lobby in alice's room list")?;
    bob_sync
        .room_list_service()
        .room(&dm_id)
        .context("DM in bob's room list")?;
    println!("both room lists show the DM");

    let alice_room = alice.get_room(&dm_id).context("alice's DM")?;
    let bob_room = bob.get_room(&dm_id).context("bob's DM")?;
    // Wait until alice sees bob joined, so the room key is shared with his device.
    wait_for("alice to see bob joined", || {
        let room = alice_room.clone();
        let bob_id = bob_id.clone();
        async move {
            Ok(room
                .get_member_no_sync(&bob_id)
                .await?
                .filter(|m| {
                    *m.membership() == matrix_sdk::ruma::events::room::member::MembershipState::Join
                })
                .map(|_| ()))
        }
    })
    .await?;
    let alice_tl = alice_room.timeline().await?;
    let bob_tl = bob_room.timeline().await?;

    alice_tl
        .send(RoomMessageEventContent::text_plain("hello bob, this is encrypted").into())
        .await?;
    wait_decrypted(&bob_tl, "hello bob, this is encrypted", &alice_id, "bob").await?;
    println!("bob decrypted alice's message");
    bob_tl
        .send(RoomMessageEventContent::text_plain("hi alice, decrypted fine").into())
        .await?;
    wait_decrypted(&alice_tl, "hi alice, decrypted fine", &bob_id, "alice").await?;
    println!("alice decrypted bob's reply");

    if media {
        check_media(&alice, &bob).await?;
        println!("media upload, authenticated download and thumbnail work");
    }
    if verify {
        check_verification(
            base,
            (&alice, &alice_sync, &alice_tl),
            (&bob, &bob_sync, &bob_tl),
            &dm_id,
        )
        .await?;
        println!("SAS verification done: alice and bob see each other verified");
    }
    if recover {
        check_recovery(base, &alice, &dm_id, &bob_id).await?;
        println!("recovery re-decrypted the earlier messages from the key backup");
    }
    if share {
        check_shared_history(base, &alice).await?;
        println!("charlie decrypted the history shared on invite");
    }

    alice_sync.stop().await;
    bob_sync.stop().await;
    // A classic /sync still works for the same accounts.
    bob.sync_once(SyncSettings::default().timeout(Duration::from_secs(1)))
        .await
        .context("classic sync")?;
    let _: &RoomId = &lobby_id;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let base = args.next().context(
        "usage: myelin-sdk-interop BASE_URL [--media] [--verify] [--recover] [--share-history]",
    )?;
    let flags: Vec<String> = args.collect();
    let media = flags.iter().any(|a| a == "--media");
    let verify = flags.iter().any(|a| a == "--verify");
    let recover = flags.iter().any(|a| a == "--recover");
    let share = flags.iter().any(|a| a == "--share-history");
    tokio::time::timeout(
        Duration::from_secs(240),
        run(&base, media, verify, recover, share),
    )
    .await
    .map_err(|_| anyhow!("interop run timed out"))??;
    println!("matrix-sdk interop: ok");
    Ok(())
}
