//! Test helpers: an in-process SFU on loopback, tokens, raw HTTP, and joining with the
//! crate's webrtc-rs LiveKit client (`myelin_sfu::client`).

#![allow(dead_code, unused_imports)] // each test crate uses a different part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

pub use myelin_sfu::client::{mint_token, Client, ConnectOptions, Event};
use myelin_sfu::{Config, Sfu};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const KEY: &str = "testkey";
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const ADMIN: &str = "admin-secret";

pub async fn start_sfu() -> SocketAddr {
    start_sfu_with_handle().await.0
}

/// Starts the SFU and also returns it, for tests that drive it directly.
pub async fn start_sfu_with_handle() -> (SocketAddr, Arc<Sfu>) {
    start_sfu_configured(|_| {}).await
}

/// Starts the SFU on the tests' settings (a port range: tests run side by side) changed by
/// `adjust`.
pub async fn start_sfu_configured(adjust: impl FnOnce(&mut Config)) -> (SocketAddr, Arc<Sfu>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = Config {
        keys: BTreeMap::from([(KEY.to_owned(), SECRET.to_owned())]),
        ..Config::default()
    };
    config.rtc.bind_ip = Some("127.0.0.1".parse().unwrap());
    config.rtc.udp_port = 0;
    config.rtc.udp_port_min = 52000;
    config.rtc.udp_port_max = 52999;
    config.room.empty_timeout_secs = 1;
    config.internal.secret = Some(ADMIN.to_owned());
    adjust(&mut config);
    config.validate().unwrap();
    // The recorder before the SFU: its counters bind to the recorder when built.
    metrics_handle();
    let sfu = Sfu::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(myelin_sfu::serve(sfu.clone(), listener));
    (addr, sfu)
}

/// The test process's Prometheus recorder, installed once (the SFU records into it).
pub fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("the only recorder of this test process")
        })
        .clone()
}

pub fn token(identity: &str, room: &str) -> String {
    mint_token(KEY, SECRET, identity, room, 600).unwrap()
}

/// A minimal HTTP/1.1 request over a raw socket; returns (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth
        .map(|a| format!("Authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A browser-style request from another origin (`extra` is more header lines, each ending
/// in CRLF); returns (status, lower-cased response head).
pub async fn http_from_origin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nOrigin: http://app.example\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let head = response
        .split_once("\r\n\r\n")
        .map_or(response.as_str(), |(h, _)| h)
        .to_ascii_lowercase();
    (status, head)
}

/// Joins `room` as `identity` (the SFU's defaults: auto-subscribe on).
pub async fn connect(addr: SocketAddr, identity: &str, room: &str) -> Client {
    connect_with(addr, identity, room, "").await
}

/// Joins with extra query parameters (e.g. `&auto_subscribe=0`).
pub async fn connect_with(addr: SocketAddr, identity: &str, room: &str, query: &str) -> Client {
    Client::connect_with(
        &format!("ws://{addr}"),
        &token(identity, room),
        ConnectOptions {
            query: query.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// A UDP port free on loopback right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
