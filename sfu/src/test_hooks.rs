//! Test-only hooks (feature `test-hooks`, never in release builds): failpoints of the
//! `fail` crate that the server's test endpoints configure.

/// The failpoint `sfu.published_stream.lost`, configured `return(PREFIX)`: whether the
/// reading of this published stream, owned by `identity`, stops here, as webrtc-rs can stop
/// it (see `Room::on_remote_track`). It fires for the first stream whose owner's identity starts
/// with PREFIX (any owner without an argument) and removes itself: one stream is lost
/// while its client still sends it.
pub(crate) fn stream_lost(identity: &str) -> bool {
    const POINT: &str = "sfu.published_stream.lost";
    let lost = fail::eval(POINT, |prefix| {
        prefix.is_none_or(|p| identity.starts_with(p.as_str()))
    }) == Some(true);
    if lost {
        fail::remove(POINT);
        tracing::warn!(identity, "test failpoint: a published stream is lost");
    }
    lost
}
