//! Connection limits: a client that sends part of a request (or nothing) and stalls is
//! disconnected after the header-read timeout while other requests and long-polling
//! `/sync` keep working; connections beyond `limits.max_connections` wait until one
//! closes.

use std::time::{Duration, Instant};

use spec_tests::TestServer;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn addr(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; the bytes read.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    // A reset is a close too.
    let _ = stream.read_to_end(&mut out).await;
    out
}

#[tokio::test]
async fn stalled_clients_are_disconnected_after_the_header_timeout() -> anyhow::Result<()> {
    let server = TestServer::start_with(&[
        ("MYELIN_REGISTRATION_MODE", "open"),
        ("MYELIN_LIMITS_HEADER_READ_TIMEOUT_SECS", "1"),
    ])
    .await?;
    let alice = server.register("alice").await?;
    let mut partial = TcpStream::connect(addr(&server)).await?;
    partial
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\nX-Slow")
        .await?;
    let mut silent = TcpStream::connect(addr(&server)).await?;
    let start = Instant::now();

    // A long poll that outlasts the header timeout is answered normally.
    let since = alice.sync("").await?["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let sync = alice
        .get(&format!("/sync?timeout=2500&since={since}"))
        .await?;
    assert_eq!(sync.status, 200, "{}", sync.text);
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "the sync did wait"
    );

    for (what, stream) in [("partial headers", &mut partial), ("silent", &mut silent)] {
        tokio::time::timeout(Duration::from_secs(5), read_to_close(stream))
            .await
            .unwrap_or_else(|_| panic!("{what}: still open after {:?}", start.elapsed()));
    }
    assert!(start.elapsed() < Duration::from_secs(6));
    let r = reqwest::get(format!("{}/_matrix/client/versions", server.base)).await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() -> anyhow::Result<()> {
    let server = TestServer::start_with(&[
        ("MYELIN_LIMITS_MAX_CONNECTIONS", "2"),
        ("MYELIN_LIMITS_HEADER_READ_TIMEOUT_SECS", "3"),
    ])
    .await?;
    // Let the connection the harness kept alive after start-up time out.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let first = TcpStream::connect(addr(&server)).await?;
    let _second = TcpStream::connect(addr(&server)).await?;
    let mut third = TcpStream::connect(addr(&server)).await?;
    third
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(1000), third.read(&mut buf)).await;
    assert!(early.is_err(), "connection 3 of 2 was served at once");
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut third))
        .await
        .expect("connection 3 is served once a slot is free");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    Ok(())
}
