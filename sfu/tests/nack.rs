//! Retransmissions a subscriber asks for are answered, but within a budget
//! (`myelin_sfu::nack_limit`): one NACK naming many packets gets at most a burst resent.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use livekit_protocol as proto;
use myelin_sfu::client::vp8;
use myelin_sfu::nack_limit::BURST;
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::{
    nack_pairs_from_sequence_numbers, TransportLayerNack,
};
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocalWriter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_gets_at_most_a_burst_resent() {
    let addr = start_sfu().await;
    let mut alice = connect(addr, "@alice:localhost:A", "room1").await;
    // Bob's client keeps the packets it gets twice: the resends of ones it had.
    let mut bob = Client::connect_with(
        &format!("ws://{addr}"),
        &token("@bob:localhost:B", "room1"),
        ConnectOptions {
            keep_duplicates: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let track = Arc::new(TrackLocalStaticRTP::new(
        vp8(),
        "cid-v".into(),
        "stream-v".into(),
    ));
    let (track_sid, _) = alice
        .announce_track(track.clone(), proto::TrackType::Video)
        .await
        .unwrap();
    alice.negotiate_publisher().await.unwrap();
    let _writer = tokio::spawn(async move {
        let mut packet = webrtc::rtp::packet::Packet::default();
        packet.header.version = 2;
        packet.header.payload_type = 96;
        for i in 0..3000u32 {
            let key = if i % 10 == 0 { 0x00 } else { 0x01 };
            packet.header.sequence_number = i as u16;
            packet.header.timestamp = i * 900;
            packet.header.marker = true;
            packet.payload = bytes::Bytes::from(vec![0x10, key, 0]);
            let _ = track.write_rtp(&packet).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // Bob receives 150 packets; he will ask for 120 of them again.
    let mut received = Vec::new();
    while received.len() < 150 {
        if let Event::Rtp { seq, track_id, .. } = bob
            .wait_for("alice's video", |e| matches!(e, Event::Rtp { .. }))
            .await
            .unwrap()
        {
            assert_eq!(track_id, track_sid);
            received.push(seq);
        }
    }
    let mut ssrc = None;
    for receiver in bob.subscriber.get_receivers().await {
        if let Some(t) = receiver.tracks().await.first() {
            ssrc = Some(t.ssrc());
        }
    }
    let asked: Vec<u16> = received[received.len() - 120..].to_vec();
    let asked_set: HashSet<u16> = asked.iter().copied().collect();
    bob.drain();
    bob.subscriber
        .write_rtcp(&[Box::new(TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: ssrc.expect("bob receives a track"),
            nacks: nack_pairs_from_sequence_numbers(&asked),
        })])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resent = bob
        .drain()
        .into_iter()
        .filter(|e| matches!(e, Event::Rtp { seq, .. } if asked_set.contains(seq)))
        .count();
    assert!(resent > 0, "the NACK was not answered");
    assert!(
        resent <= BURST as usize,
        "{resent} of {} asked packets resent, above the burst of {BURST}",
        asked.len()
    );
}
