//! Myelin's companion SFU: speaks LiveKit's signalling protocol (protobuf over WebSocket,
//! JWT access tokens) so that `livekit-client` apps such as Element Call can run calls
//! through it, and forwards media with webrtc-rs.
//!
//! Layers, each importing only downwards: [`http`] and [`signal`] (service) → [`room`] and
//! [`participant`] (rtc) → [`media`], [`out_track`] and [`forward`] (sfu); [`state`] is the pure
//! signalling state machine, [`speakers`] active-speaker detection, [`auth`] the token
//! check, [`config`] the settings, [`turn`] the ICE servers handed to clients and the
//! embedded TURN server. With the `client` feature, `client` is a webrtc-rs
//! LiveKit client for tests and load generation.

pub mod auth;
#[cfg(feature = "client")]
pub mod client;
pub mod config;
pub mod forward;
pub mod http;
pub mod media;
pub mod metrics;
pub mod nack_limit;
pub mod out_track;
pub mod participant;
pub mod room;
pub mod signal;
pub mod speakers;
pub mod state;
#[cfg(feature = "test-hooks")]
mod test_hooks;
pub mod turn;
pub mod turn_tcp;
pub mod wire;

use std::sync::Arc;

pub use config::Config;
pub use room::Sfu;

/// Serves the SFU on an already bound listener until the task is dropped.
pub async fn serve(sfu: Arc<Sfu>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, http::app(sfu).into_make_service()).await
}
