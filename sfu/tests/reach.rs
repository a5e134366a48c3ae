//! Reaching the SFU through firewalls: every peer connection's ICE and media on one UDP
//! port (`rtc.udp_port`), and candidates advertised for the configured external address.

mod common;

use common::*;
use livekit_protocol as proto;
use myelin_sfu::client::WAIT;
use proto::signal_response::Message as Resp;

/// The (address, port) of every `a=candidate` line of `sdp` and of the trickled
/// candidates among `events`.
fn candidates(sdp: &str, events: &[Event]) -> Vec<(String, u16)> {
    let mut lines: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .map(str::to_owned)
        .collect();
    for event in events {
        if let Event::Signal(Resp::Trickle(t)) = event {
            let init: serde_json::Value = serde_json::from_str(&t.candidate_init).unwrap();
            lines.push(init["candidate"].as_str().unwrap_or_default().to_owned());
        }
    }
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("candidate:"))
        .map(|c| {
            let fields: Vec<&str> = c.split_whitespace().collect();
            (fields[4].to_owned(), fields[5].parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_exchange_media_through_one_udp_port() {
    let port = free_udp_port();
    let (addr, _sfu) = start_sfu_configured(|c| c.rtc.udp_port = port).await;
    let mut alice = connect(addr, "@alice:localhost:A", "room1").await;
    let mut bob = connect(addr, "@bob:localhost:B", "room1").await;
    let (track_sid, _writer) = alice.publish_audio("cid-a").await.unwrap();
    alice.wait_publisher_connected().await.unwrap();
    for _ in 0..10 {
        bob.wait_for(
            "alice's audio",
            |e| matches!(e, Event::Rtp { track_id, .. } if *track_id == track_sid),
        )
        .await
        .unwrap();
    }
    // Both of the SFU's ends (alice's publisher, bob's subscriber) sit on the one port:
    // the candidates the SFU sent, and the pairs ICE chose.
    let alice_sdp = alice.publisher.remote_description().await.unwrap().sdp;
    let bob_sdp = bob.subscriber.remote_description().await.unwrap().sdp;
    for (who, sdp, events, pc) in [
        ("alice", alice_sdp, alice.drain(), &alice.publisher),
        ("bob", bob_sdp, bob.drain(), &bob.subscriber),
    ] {
        let found = candidates(&sdp, &events);
        assert!(!found.is_empty(), "{who}: the SFU sent no candidates");
        assert!(
            found.iter().all(|(ip, p)| ip == "127.0.0.1" && *p == port),
            "{who}: candidates off udp/{port}: {found:?}"
        );
        let pair = pc
            .sctp()
            .transport()
            .ice_transport()
            .get_selected_candidate_pair()
            .await;
        let pair = pair.map(|p| p.to_string()).unwrap_or_default();
        assert!(
            pair.ends_with(&format!("127.0.0.1:{port}")),
            "{who}: selected pair {pair:?} does not end at udp/{port}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_carry_the_external_address() {
    let port = free_udp_port();
    let (addr, _sfu) = start_sfu_configured(|c| {
        c.rtc.udp_port = port;
        c.rtc.external_ip = Some("203.0.113.7".parse().unwrap());
    })
    .await;
    let mut alice = connect(addr, "@alice:localhost:A", "room1").await;
    alice
        .publisher
        .create_data_channel("_reliable", None)
        .await
        .unwrap();
    alice.negotiate_publisher().await.unwrap();
    alice
        .wait_for("the answer", |e| {
            matches!(e, Event::Signal(Resp::Answer(_)))
        })
        .await
        .unwrap();
    // The SFU trickles what it did not put in the answer; give it the time to gather.
    tokio::time::sleep(WAIT.min(std::time::Duration::from_secs(1))).await;
    let sdp = alice.publisher.remote_description().await.unwrap().sdp;
    let found = candidates(&sdp, &alice.drain());
    assert!(!found.is_empty(), "the SFU sent no candidates");
    assert!(
        found.iter().all(|c| *c == ("203.0.113.7".to_owned(), port)),
        "candidates other than 203.0.113.7:{port}: {found:?}"
    );
}

const TURN_SECRET: &str = "turn-shared-secret";

/// A client allowed only relayed candidates reaches the SFU through the embedded TURN
/// server, with the time-limited credentials of its join response, and receives media.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_client_receives_media_through_the_embedded_turn_server() {
    let (media_port, turn_port) = (free_udp_port(), free_udp_port());
    let turn_tcp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (addr, _sfu) = start_sfu_configured(|c| {
        c.rtc.udp_port = media_port;
        c.rtc.turn.enabled = true;
        c.rtc.turn.udp_port = turn_port;
        c.rtc.turn.tcp_port = turn_tcp_port;
        c.rtc.turn.secret = Some(TURN_SECRET.into());
    })
    .await;
    let mut alice = connect(addr, "@alice:localhost:A", "room1").await;
    let mut bob = Client::connect_with(
        &format!("ws://{addr}"),
        &token("@bob:localhost:B", "room1"),
        ConnectOptions {
            relay_only: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let servers = &bob.join.ice_servers;
    assert_eq!(servers.len(), 1, "{servers:?}");
    // Both of the embedded server's transports. (webrtc-rs' ICE agent only uses the UDP
    // one: it has no TURN-over-TCP client; browsers use both, see spec-tests' sfu_reach.)
    assert_eq!(
        servers[0].urls,
        [
            format!("turn:127.0.0.1:{turn_port}?transport=udp"),
            format!("turn:127.0.0.1:{turn_tcp_port}?transport=tcp")
        ]
    );
    let (expiry, identity) = servers[0].username.split_once(':').unwrap();
    assert_eq!(identity, "@bob:localhost:B");
    assert!(expiry.parse::<u64>().unwrap() > myelin_sfu::auth::now_secs());
    assert_eq!(
        servers[0].credential,
        myelin_sfu::turn::credential(TURN_SECRET, &servers[0].username)
    );

    let (track_sid, _writer) = alice.publish_audio("cid-a").await.unwrap();
    for _ in 0..10 {
        bob.wait_for(
            "alice's audio through TURN",
            |e| matches!(e, Event::Rtp { track_id, .. } if *track_id == track_sid),
        )
        .await
        .unwrap();
    }
    let pair = bob
        .subscriber
        .sctp()
        .transport()
        .ice_transport()
        .get_selected_candidate_pair()
        .await
        .map(|p| p.to_string())
        .unwrap_or_default();
    let local = pair.split("<->").next().unwrap_or_default();
    assert!(local.contains("relay"), "bob's pair is not relayed: {pair}");
}
