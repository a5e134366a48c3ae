use super::*;
use livekit_protocol::UpdateTrackSettings;

fn forwarded(v: Verdict) -> Option<(u16, u32)> {
    match v {
        Verdict::Forward(seq, ts) => Some((seq, ts)),
        Verdict::Drop => None,
    }
}

#[test]
fn waits_for_a_keyframe_and_asks_for_one() {
    let mut st = DownState::default();
    let t0 = Instant::now();
    let mut pli = None;
    // Video delta frame first: dropped, PLI requested on that layer.
    let v = decide(&mut st, 7, (1, 100), 7, Some(false), 90000, t0, &mut pli);
    assert!(forwarded(v).is_none());
    assert_eq!(pli, Some(7));
    // Another delta right after: still dropped, but no second PLI within the interval.
    pli = None;
    let v = decide(&mut st, 7, (2, 100), 7, Some(false), 90000, t0, &mut pli);
    assert!(forwarded(v).is_none());
    assert_eq!(pli, None);
    // The keyframe starts forwarding.
    let v = decide(&mut st, 7, (3, 200), 7, Some(true), 90000, t0, &mut pli);
    assert_eq!(forwarded(v), Some((3, 200)));
    let v = decide(&mut st, 7, (4, 300), 7, Some(false), 90000, t0, &mut pli);
    assert_eq!(forwarded(v), Some((4, 300)));
}

#[test]
fn switches_up_only_on_a_keyframe_of_the_better_layer() {
    let mut st = DownState::default();
    let t0 = Instant::now();
    let mut pli = None;
    decide(&mut st, 1, (10, 1000), 1, Some(true), 90000, t0, &mut pli);
    // A better layer (2) appears: layer 1 keeps flowing, a PLI goes to layer 2.
    let t1 = t0 + Duration::from_secs(1);
    pli = None;
    let v = decide(&mut st, 1, (11, 1900), 2, Some(false), 90000, t1, &mut pli);
    assert_eq!(forwarded(v), Some((11, 1900)));
    assert_eq!(pli, Some(2));
    // Delta frames of layer 2 are not forwarded yet.
    let v = decide(&mut st, 2, (500, 77), 2, Some(false), 90000, t1, &mut pli);
    assert!(forwarded(v).is_none());
    // Its keyframe is, numbered right after layer 1's last packet.
    let t2 = t1 + Duration::from_millis(10);
    let v = decide(&mut st, 2, (501, 977), 2, Some(true), 90000, t2, &mut pli);
    assert_eq!(forwarded(v), Some((12, 1900 + 900)));
    // Now layer 1 is dropped.
    let v = decide(&mut st, 1, (12, 2800), 2, Some(false), 90000, t2, &mut pli);
    assert!(forwarded(v).is_none());
}

#[test]
fn audio_and_paused_tracks() {
    let mut st = DownState::default();
    let t0 = Instant::now();
    let mut pli = None;
    // Audio (no keyframe notion) forwards at once and never asks for keyframes.
    let v = decide(&mut st, 3, (5, 960), 3, None, 48000, t0, &mut pli);
    assert_eq!(forwarded(v), Some((5, 960)));
    assert_eq!(pli, None);
    st.paused = true;
    let v = decide(&mut st, 3, (6, 1920), 3, None, 48000, t0, &mut pli);
    assert!(forwarded(v).is_none());
}

#[test]
fn forwarded_packets_marshal_after_the_down_track_adds_extensions() {
    use webrtc::util::{Marshal, MarshalSize, Unmarshal};
    // As Chrome sends audio: a one-byte-header extension block (RFC 8285) holding one
    // 1-byte element, padded to a 32-bit word.
    let raw: &[u8] = &[
        0x90, 111, 0x00, 0x07, 0, 0, 0x03, 0xe8, 0x11, 0x22, 0x33, 0x44, // header, X set
        0xbe, 0xde, 0x00, 0x01, // one-byte profile, 1 word
        0x10, 0x55, 0x00, 0x00, // id 1, len 1, then padding
        0xaa, 0xbb, 0xcc, // payload
    ];
    let mut buf = raw;
    let packet = webrtc::rtp::packet::Packet::unmarshal(&mut buf).unwrap();
    assert_eq!(packet.header.extensions_padding, 2);
    let mut out = renumbered(&subscriber_template(&packet), 9, 4242, None);
    assert!(!out.header.extension && out.header.extensions.is_empty());
    // What TrackLocalStaticRTP does with the subscriber's negotiated extensions.
    out.header
        .set_extension(3, bytes::Bytes::from_static(&[0x01, 0x02]))
        .unwrap();
    let wire = out.marshal().expect("marshal size and output agree");
    assert_eq!(wire.len(), out.marshal_size());
    let mut back = &wire[..];
    let back = webrtc::rtp::packet::Packet::unmarshal(&mut back).unwrap();
    assert_eq!(
        (back.header.sequence_number, back.header.timestamp),
        (9, 4242)
    );
    assert_eq!(&back.payload[..], &[0xaa, 0xbb, 0xcc]);
    assert_eq!(
        back.header.get_extension(3).as_deref(),
        Some(&[0x01, 0x02][..])
    );
    assert_eq!(back.header.get_extension(1), None);
}

#[test]
fn encodings_a_browser_offer_declares() {
    // Shaped like Chrome's renegotiation offer after livekit-client published a
    // microphone (SSRC with RTX-less audio) and a simulcast camera (RIDs, no SSRCs),
    // plus a camera it stopped sending and a rejected section.
    let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0 1 2 3\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=sendrecv\r\n\
        a=msid:s1 t1\r\na=ssrc:1111 cname:x\r\na=ssrc:1111 msid:s1 t1\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:2\r\na=sendonly\r\n\
        a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:3\r\na=sendrecv\r\n\
        a=ssrc-group:FID 2222 3333\r\na=ssrc:2222 cname:x\r\na=ssrc:3333 cname:x\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:4\r\na=inactive\r\na=ssrc:4444 cname:x\r\n\
        m=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:5\r\na=ssrc:5555 cname:x\r\n";
    let expected: HashMap<String, usize> = [
        ("1".to_owned(), 1),
        ("2".to_owned(), 3),
        ("3".to_owned(), 1),
    ]
    .into();
    assert_eq!(sent_encodings(sdp), expected);
    assert!(sent_encodings("v=0\r\n").is_empty());
    // The SSRCs the client still sends: primaries and repairs of sending sections, not
    // those of a section it stopped sending on or a rejected one.
    for (ssrc, sent) in [
        (1111, true),
        (2222, true),
        (3333, true),
        (4444, false),
        (5555, false),
        (111, false),
    ] {
        assert_eq!(sends_ssrc(sdp, ssrc), sent, "ssrc {ssrc}");
    }
}

#[test]
fn picks_best_layer_within_cap() {
    let active = [(1, 10), (2, 20), (3, 30)];
    assert_eq!(pick_layer(&active, u8::MAX), Some(30));
    assert_eq!(pick_layer(&active, 2), Some(20));
    assert_eq!(pick_layer(&[(2, 20), (3, 30)], 1), Some(20));
    assert_eq!(pick_layer(&[(0, 5)], 1), Some(5));
    assert_eq!(pick_layer(&[], 3), None);
}

#[test]
fn caps_from_track_settings() {
    let layers = [(1, 320, 180), (2, 640, 360), (3, 1280, 720)];
    let settings = |width, height, quality| UpdateTrackSettings {
        width,
        height,
        quality,
        ..Default::default()
    };
    assert_eq!(max_rank_for(&settings(300, 170, 2), &layers), 1);
    assert_eq!(max_rank_for(&settings(600, 0, 2), &layers), 2);
    assert_eq!(max_rank_for(&settings(1920, 1080, 2), &layers), 3);
    assert_eq!(max_rank_for(&settings(0, 0, 0), &layers), 1);
    assert_eq!(max_rank_for(&settings(0, 0, 1), &layers), 2);
    assert_eq!(max_rank_for(&settings(0, 0, 2), &layers), u8::MAX);
}
