//! One signalling session: a WebSocket carrying `SignalRequest`s from the client and
//! `SignalResponse`s to it (protobuf, or JSON: see [`crate::wire`]), from the join
//! response until leave, timeout or failure.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use proto::signal_request::Message as Request;
use proto::signal_response::Message as Response;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::Grant;
use crate::participant::Participant;
use crate::room::{now_ms, Room, Sfu};
use crate::state::new_sid;
use crate::wire::Wire;

/// Protocol version announced in `ServerInfo` (what livekit-client 2.x speaks).
const PROTOCOL_VERSION: i32 = 16;

/// Runs a session for a validated token until the participant leaves or is dropped.
pub async fn run(sfu: Arc<Sfu>, grant: Grant, auto_subscribe: bool, wire: Wire, socket: WebSocket) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<proto::SignalResponse>();
    let participant =
        match Participant::new(&sfu.api, new_sid("PA_"), grant.clone(), auto_subscribe, tx).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "creating peer connections failed");
                return;
            }
        };
    let (room, joined, room_info) = loop {
        let room = sfu.open_room(&grant.room);
        if let Ok((joined, info)) = room.join(&participant) {
            break (room, joined, info);
        }
    };
    tracing::info!(room = %room.name, participant = %participant.sid, identity = %grant.identity, "joined");
    wire_publisher(&room, &participant);

    let rtc = &sfu.config.rtc;
    let join = proto::SignalResponse {
        message: Some(Response::Join(proto::JoinResponse {
            room: Some(room_info),
            participant: Some(joined.participant),
            other_participants: joined.others,
            server_version: env!("CARGO_PKG_VERSION").into(),
            subscriber_primary: false,
            ping_interval: rtc.ping_interval_secs as i32,
            ping_timeout: rtc.ping_timeout_secs as i32,
            ice_servers: crate::turn::ice_servers(rtc, &grant.identity),
            server_info: Some(proto::ServerInfo {
                edition: proto::server_info::Edition::Standard as i32,
                version: env!("CARGO_PKG_VERSION").into(),
                protocol: PROTOCOL_VERSION,
                node_id: "myelin-sfu".into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    if ws_tx.send(wire.encode(&join)).await.is_err() {
        finish(&sfu, &room, &participant).await;
        return;
    }
    room.start_subscriptions(&participant).await;

    let timeout = Duration::from_secs(u64::from(rtc.ping_timeout_secs));
    let mut deadline = Instant::now() + timeout;
    loop {
        tokio::select! {
            incoming = ws_rx.next() => {
                let Some(Ok(message)) = incoming else { break };
                deadline = Instant::now() + timeout;
                if matches!(message, WsMessage::Close(_)) {
                    break;
                }
                let request = match wire.decode(&message) {
                    Some(Ok(request)) => request,
                    Some(Err(e)) => {
                        tracing::warn!(participant = %participant.sid, error = %e, "signal request refused");
                        continue;
                    }
                    None => continue,
                };
                let Some(request) = request.message else { continue };
                if !handle(&room, &participant, request).await {
                    break;
                }
            }
            outgoing = rx.recv() => {
                let Some(response) = outgoing else { break };
                let leaving = matches!(response.message, Some(Response::Leave(_)));
                if ws_tx.send(wire.encode(&response)).await.is_err() || leaving {
                    break;
                }
            }
            _ = participant.disconnect.notified() => break,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::info!(participant = %participant.sid, "signalling timed out");
                break;
            }
        }
    }
    // Deliver whatever is queued (e.g. a leave) before closing.
    while let Ok(response) = rx.try_recv() {
        let _ = ws_tx.send(wire.encode(&response)).await;
    }
    let _ = ws_tx.send(WsMessage::Close(None)).await;
    finish(&sfu, &room, &participant).await;
}

async fn finish(sfu: &Arc<Sfu>, room: &Arc<Room>, participant: &Arc<Participant>) {
    room.leave(&participant.sid).await;
    participant.close().await;
    if room.is_empty() {
        sfu.schedule_close(room);
    }
}

/// Routes media and data arriving on the publisher connection into the room.
fn wire_publisher(room: &Arc<Room>, participant: &Arc<Participant>) {
    let weak_room = Arc::downgrade(room);
    let weak_participant = Arc::downgrade(participant);
    participant
        .publisher
        .on_track(Box::new(move |remote, receiver, _transceiver| {
            let room = weak_room.clone();
            let participant = weak_participant.clone();
            Box::pin(async move {
                if let (Some(room), Some(participant)) = (room.upgrade(), participant.upgrade()) {
                    tokio::spawn(async move {
                        room.on_remote_track(&participant, remote, receiver).await;
                    });
                }
            })
        }));
    let weak_room = Arc::downgrade(room);
    let weak_participant = Arc::downgrade(participant);
    participant
        .publisher
        .on_data_channel(Box::new(move |channel| {
            let room = weak_room.clone();
            let participant = weak_participant.clone();
            Box::pin(async move {
                let label = channel.label().to_owned();
                channel.on_message(Box::new(move |message| {
                    let room = room.clone();
                    let participant = participant.clone();
                    let label = label.clone();
                    Box::pin(async move {
                        if let (Some(room), Some(participant)) =
                            (room.upgrade(), participant.upgrade())
                        {
                            room.relay_data(&participant, &label, &message.data).await;
                        }
                    })
                }));
            })
        }));
}

/// Handles one request; returns false when the session should end.
async fn handle(room: &Arc<Room>, participant: &Arc<Participant>, request: Request) -> bool {
    match request {
        Request::Offer(offer) => {
            if let Err(e) = participant.handle_offer(offer).await {
                tracing::warn!(participant = %participant.sid, error = %e, "bad publisher offer");
            }
        }
        Request::Answer(answer) => {
            if let Err(e) = participant.handle_answer(answer).await {
                tracing::warn!(participant = %participant.sid, error = %e, "bad subscriber answer");
            }
        }
        Request::Trickle(trickle) => participant.handle_trickle(&trickle).await,
        Request::AddTrack(req) => match room.add_track(&participant.sid, &req) {
            Ok(track) => {
                participant.send(Response::TrackPublished(proto::TrackPublishedResponse {
                    cid: req.cid,
                    track: Some(track),
                }))
            }
            Err(e) => {
                tracing::warn!(participant = %participant.sid, cid = %req.cid, error = %e, "add track refused")
            }
        },
        Request::Mute(mute) => {
            if let Err(e) = room
                .set_muted(&participant.sid, &mute.sid, mute.muted, false)
                .await
            {
                tracing::debug!(participant = %participant.sid, error = %e, "mute refused");
            }
        }
        Request::Subscription(update) => room.update_subscription(participant, &update).await,
        Request::TrackSetting(settings) => {
            room.update_track_settings(&participant.sid, &settings)
                .await
        }
        Request::Leave(_) => return false,
        Request::Ping(_) => participant.send(Response::Pong(now_ms())),
        Request::PingReq(ping) => participant.send(Response::PongResp(proto::Pong {
            last_ping_timestamp: ping.timestamp,
            timestamp: now_ms(),
        })),
        other => {
            tracing::debug!(participant = %participant.sid, request = ?std::mem::discriminant(&other), "unsupported request ignored");
        }
    }
    true
}
