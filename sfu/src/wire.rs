//! The two encodings of the signalling WebSocket. LiveKit clients speak protobuf in binary
//! frames; a browser page without a protobuf library (Myelin Meet) asks for `format=json`
//! on `/rtc` and gets the same messages in their canonical JSON form (the
//! `livekit-protocol` crate's pbjson serde: camelCase fields, enums by name, 64-bit
//! integers as strings) in text frames.

use axum::extract::ws::Message as WsMessage;
use livekit_protocol as proto;
use prost::Message as _;

/// How a session's signalling messages are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// Protobuf in binary frames (LiveKit clients).
    Protobuf,
    /// Canonical JSON in text frames.
    Json,
}

/// A frame the session cannot use.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Protobuf bytes that do not decode.
    #[error("undecodable protobuf signal request: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// Text that is not a JSON signal request.
    #[error("undecodable JSON signal request: {0}")]
    Json(#[from] serde_json::Error),
    /// A text frame on a protobuf session or a binary frame on a JSON one.
    #[error("a {0} frame on a {1:?} session")]
    WrongFrame(&'static str, Wire),
}

impl Wire {
    /// The encoding a `/rtc` query asks for (`format=json`; anything else is protobuf).
    pub fn from_query(format: Option<&str>) -> Wire {
        match format {
            Some("json") => Wire::Json,
            _ => Wire::Protobuf,
        }
    }

    /// A response as a WebSocket frame.
    pub fn encode(self, response: &proto::SignalResponse) -> WsMessage {
        match self {
            Wire::Protobuf => WsMessage::Binary(response.encode_to_vec().into()),
            // Serialising generated protocol types cannot fail (no maps with non-string
            // keys, no foreign types); an empty object would only be ignored by the page.
            Wire::Json => WsMessage::Text(
                serde_json::to_string(response)
                    .unwrap_or_else(|_| "{}".to_owned())
                    .into(),
            ),
        }
    }

    /// A request from a data frame (`None` for frames that carry no request: ping, pong).
    pub fn decode(self, frame: &WsMessage) -> Option<Result<proto::SignalRequest, WireError>> {
        match (self, frame) {
            (Wire::Protobuf, WsMessage::Binary(data)) => {
                Some(proto::SignalRequest::decode(data.as_ref()).map_err(Into::into))
            }
            (Wire::Json, WsMessage::Text(text)) => {
                Some(serde_json::from_str(text.as_str()).map_err(Into::into))
            }
            (_, WsMessage::Binary(_)) => Some(Err(WireError::WrongFrame("binary", self))),
            (_, WsMessage::Text(_)) => Some(Err(WireError::WrongFrame("text", self))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::signal_request::Message as Request;
    use proto::signal_response::Message as Response;

    fn requests() -> Vec<proto::SignalRequest> {
        let wrap = |m| proto::SignalRequest { message: Some(m) };
        vec![
            wrap(Request::Offer(proto::SessionDescription {
                r#type: "offer".into(),
                sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n".into(),
                ..Default::default()
            })),
            wrap(Request::Trickle(proto::TrickleRequest {
                candidate_init: r#"{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host"}"#
                    .into(),
                target: proto::SignalTarget::Subscriber as i32,
                r#final: false,
            })),
            wrap(Request::AddTrack(proto::AddTrackRequest {
                cid: "camera".into(),
                name: "camera".into(),
                r#type: proto::TrackType::Video as i32,
                source: proto::TrackSource::Camera as i32,
                width: 640,
                height: 480,
                ..Default::default()
            })),
            wrap(Request::Mute(proto::MuteTrackRequest {
                sid: "TR_1".into(),
                muted: true,
            })),
            wrap(Request::Ping(1_733_000_000_123)),
            wrap(Request::Leave(proto::LeaveRequest {
                reason: proto::DisconnectReason::ClientInitiated as i32,
                ..Default::default()
            })),
        ]
    }

    #[test]
    fn a_request_means_the_same_in_json_and_protobuf() {
        for request in requests() {
            let binary = Wire::Protobuf.encode_request(&request);
            let text = Wire::Json.encode_request(&request);
            let from_binary = Wire::Protobuf.decode(&binary).unwrap().unwrap();
            let from_text = Wire::Json.decode(&text).unwrap().unwrap();
            assert_eq!(from_binary, request);
            assert_eq!(from_text, request, "{text:?}");
        }
    }

    #[test]
    fn json_uses_the_canonical_names() {
        let WsMessage::Text(text) = Wire::Json.encode_request(&requests()[2]) else {
            panic!("a text frame");
        };
        let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(value["addTrack"]["type"], "VIDEO");
        assert_eq!(value["addTrack"]["source"], "CAMERA");
        assert_eq!(value["addTrack"]["width"], 640);
        // 64-bit integers travel as strings in canonical JSON.
        let WsMessage::Text(ping) = Wire::Json.encode_request(&requests()[4]) else {
            panic!("a text frame");
        };
        let value: serde_json::Value = serde_json::from_str(ping.as_str()).unwrap();
        assert_eq!(value["ping"], "1733000000123");
    }

    #[test]
    fn a_response_means_the_same_in_json_and_protobuf() {
        let response = proto::SignalResponse {
            message: Some(Response::Join(proto::JoinResponse {
                participant: Some(proto::ParticipantInfo {
                    sid: "PA_1".into(),
                    identity: "@alice:localhost:DEVICE".into(),
                    ..Default::default()
                }),
                ping_interval: 10,
                ping_timeout: 20,
                ..Default::default()
            })),
        };
        let WsMessage::Binary(binary) = Wire::Protobuf.encode(&response) else {
            panic!("a binary frame");
        };
        let WsMessage::Text(text) = Wire::Json.encode(&response) else {
            panic!("a text frame");
        };
        let from_binary = proto::SignalResponse::decode(binary.as_ref()).unwrap();
        let from_text: proto::SignalResponse = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(from_binary, response);
        assert_eq!(from_text, response);
    }

    #[test]
    fn frames_of_the_other_encoding_and_garbage_are_errors() {
        let text = Wire::Json.encode_request(&requests()[0]);
        let binary = Wire::Protobuf.encode_request(&requests()[0]);
        assert!(matches!(
            Wire::Protobuf.decode(&text),
            Some(Err(WireError::WrongFrame("text", Wire::Protobuf)))
        ));
        assert!(matches!(
            Wire::Json.decode(&binary),
            Some(Err(WireError::WrongFrame("binary", Wire::Json)))
        ));
        let garbage = WsMessage::Text("{\"offer\": 5".into());
        assert!(matches!(
            Wire::Json.decode(&garbage),
            Some(Err(WireError::Json(_)))
        ));
        assert!(Wire::Json
            .decode(&WsMessage::Ping(Vec::new().into()))
            .is_none());
    }

    impl Wire {
        /// A request as a client would send it.
        fn encode_request(self, request: &proto::SignalRequest) -> WsMessage {
            match self {
                Wire::Protobuf => WsMessage::Binary(request.encode_to_vec().into()),
                Wire::Json => WsMessage::Text(serde_json::to_string(request).unwrap().into()),
            }
        }
    }
}
