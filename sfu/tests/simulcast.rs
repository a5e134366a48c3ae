//! A webrtc-rs client publishes VP8 with three simulcast layers (`q`, `h`, `f`); the
//! subscriber must get exactly one layer — the best — as one continuous stream, and fall
//! back to the next layer (at a keyframe, numbering continued) when the best one stops.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use livekit_protocol as proto;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocalWriter;

/// Layer markers carried in the third payload byte.
const Q: u8 = 1;
const H: u8 = 2;
const F: u8 = 3;

fn vp8() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: "video/VP8".into(),
        clock_rate: 90000,
        ..Default::default()
    }
}

/// Writes VP8-shaped packets (keyframe every 10th) on one layer every 10 ms.
fn spawn_layer(track: Arc<TrackLocalStaticRTP>, marker: u8) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut packet = webrtc::rtp::packet::Packet::default();
        packet.header.version = 2;
        packet.header.payload_type = 96;
        let base_seq = u16::from(marker) * 20000;
        let base_ts = u32::from(marker) * 1_000_000;
        for i in 0..6000u32 {
            let key = if i % 10 == 0 { 0x00 } else { 0x01 };
            packet.header.sequence_number = base_seq.wrapping_add(i as u16);
            packet.header.timestamp = base_ts + i * 900;
            packet.header.marker = true;
            packet.payload = bytes::Bytes::from(vec![0x10, key, marker]);
            let _ = track.write_rtp(&packet).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Checks that `seq` continues `last` without a jump. Loopback UDP on a busy machine may
/// lose or reorder the odd packet, so a gap of a few is tolerated; a layer switch that
/// failed to rewrite would jump by thousands (each layer numbers from its own base).
fn continues(last: u16, seq: u16) -> bool {
    let d = seq.wrapping_sub(last);
    (1..=3).contains(&d)
}

/// Next RTP packet as (seq, ts, layer marker).
async fn next_rtp(client: &mut Client) -> (u16, u32, u8) {
    match client
        .wait_for("rtp", |e| matches!(e, Event::Rtp { .. }))
        .await
        .unwrap()
    {
        Event::Rtp {
            seq, ts, payload, ..
        } => (seq, ts, payload.get(2).copied().unwrap_or(0)),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_gets_best_layer_and_falls_back_seamlessly() {
    let addr = start_sfu().await;
    let mut alice = connect(addr, "@alice:localhost:A", "sim").await;
    let mut bob = connect(addr, "@bob:localhost:B", "sim").await;
    // As livekit-client does: connect first, publish by renegotiation. (Publishing RID-only
    // simulcast in the very first offer races inside webrtc-rs 0.14, see the README.)
    alice.connect_publisher().await.unwrap();

    let layer = |rid: &str| {
        Arc::new(TrackLocalStaticRTP::new_with_rid(
            vp8(),
            "cid-video".into(),
            rid.into(),
            "stream-v".into(),
        ))
    };
    let (f, h, q) = (layer("f"), layer("h"), layer("q"));
    let sender = alice.publisher.add_track(f.clone()).await.unwrap();
    sender.add_encoding(h.clone()).await.unwrap();
    sender.add_encoding(q.clone()).await.unwrap();
    let video_layer = |quality: proto::VideoQuality, rid: &str, width: u32| proto::VideoLayer {
        quality: quality as i32,
        width,
        height: width * 9 / 16,
        rid: rid.into(),
        ..Default::default()
    };
    #[allow(deprecated)] // `layers` is deprecated but still what livekit-client sends
    let add = proto::AddTrackRequest {
        cid: "cid-video".into(),
        name: "camera".into(),
        r#type: proto::TrackType::Video as i32,
        source: proto::TrackSource::Camera as i32,
        width: 1280,
        height: 720,
        layers: vec![
            video_layer(proto::VideoQuality::Low, "q", 320),
            video_layer(proto::VideoQuality::Medium, "h", 640),
            video_layer(proto::VideoQuality::High, "f", 1280),
        ],
        ..Default::default()
    };
    alice.send.send(Req::AddTrack(add)).unwrap();
    alice.negotiate_publisher().await.unwrap();
    let _q_writer = spawn_layer(q, Q);
    let _h_writer = spawn_layer(h, H);
    let f_writer = spawn_layer(f, F);

    let update = bob
        .wait_for("the video track", |e| {
            matches!(e, Event::Signal(Resp::Update(u)) if u.participants.iter().any(|p| !p.tracks.is_empty()))
        })
        .await.unwrap();
    let Event::Signal(Resp::Update(update)) = update else {
        unreachable!()
    };
    let track = update.participants[0].tracks[0].clone();
    assert_eq!(track.r#type, proto::TrackType::Video as i32);
    #[allow(deprecated)]
    {
        assert!(track.simulcast);
        assert_eq!(track.layers.len(), 3);
    }

    // Whatever layer comes first, the stream settles on `f` and stays continuous.
    let (mut last_seq, mut last_ts, mut layer) = next_rtp(&mut bob).await;
    let mut switches = 0;
    let mut f_count = 0;
    while f_count < 50 {
        let (seq, ts, marker) = next_rtp(&mut bob).await;
        if marker == layer && last_seq.wrapping_sub(seq) < 8 {
            continue; // a reordered packet
        }
        assert!(
            continues(last_seq, seq),
            "sequence jump {last_seq} → {seq} at layer {marker}"
        );
        assert!(ts.wrapping_sub(last_ts) < 1 << 31, "timestamp went back");
        if marker != layer {
            switches += 1;
            assert!(
                marker > layer,
                "switched down while the best layer was live"
            );
        }
        if marker == F {
            f_count += 1;
        }
        (last_seq, last_ts, layer) = (seq, ts, marker);
    }
    assert!(switches <= 2);

    // `f` stops: after the idle time the subscriber gets `h`, numbering continued.
    f_writer.abort();
    loop {
        let (seq, ts, marker) = next_rtp(&mut bob).await;
        if marker == F && last_seq.wrapping_sub(seq) < 8 {
            continue; // a reordered packet
        }
        assert!(
            continues(last_seq, seq),
            "sequence jump {last_seq} → {seq} on fallback"
        );
        assert!(ts.wrapping_sub(last_ts) < 1 << 31, "timestamp went back");
        (last_seq, last_ts) = (seq, ts);
        if marker == H {
            break;
        }
        assert_eq!(marker, F);
    }
    for _ in 0..20 {
        let (seq, _, marker) = next_rtp(&mut bob).await;
        assert_eq!(marker, H);
        if last_seq.wrapping_sub(seq) < 8 {
            continue; // a reordered packet
        }
        assert!(
            continues(last_seq, seq),
            "sequence jump {last_seq} → {seq} on h"
        );
        last_seq = seq;
    }

    // Bob's player shrinks to thumbnail size: he is moved down to `q`, seamlessly.
    bob.send
        .send(Req::TrackSetting(proto::UpdateTrackSettings {
            track_sids: vec![track.sid.clone()],
            width: 160,
            height: 90,
            quality: proto::VideoQuality::High as i32,
            ..Default::default()
        }))
        .unwrap();
    loop {
        let (seq, _, marker) = next_rtp(&mut bob).await;
        if last_seq.wrapping_sub(seq) < 8 {
            continue;
        }
        assert!(
            continues(last_seq, seq),
            "sequence jump {last_seq} → {seq} going down"
        );
        last_seq = seq;
        if marker == Q {
            break;
        }
        assert_eq!(marker, H);
    }
    for _ in 0..20 {
        let (seq, _, marker) = next_rtp(&mut bob).await;
        assert_eq!(marker, Q);
        if last_seq.wrapping_sub(seq) < 8 {
            continue;
        }
        assert!(continues(last_seq, seq));
        last_seq = seq;
    }
}
