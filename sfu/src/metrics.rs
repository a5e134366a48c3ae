//! Counters for the Prometheus text exposition at `/internal/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide SFU counters, shared by every room (passed down, never global).
#[derive(Debug, Default)]
pub struct Metrics {
    /// RTP packets received from publishers.
    pub rtp_in: AtomicU64,
    /// RTP packets written to subscribers.
    pub rtp_out: AtomicU64,
    /// RTP payload bytes written to subscribers.
    pub rtp_out_bytes: AtomicU64,
    /// Data packets relayed (counted once per recipient).
    pub data_out: AtomicU64,
}

/// Gauges taken at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub rooms: usize,
    pub participants: usize,
    pub tracks: usize,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text format.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "myelin_sfu_rooms",
            "gauge",
            "Open rooms.",
            gauges.rooms as u64,
        );
        metric(
            "myelin_sfu_participants",
            "gauge",
            "Connected participants.",
            gauges.participants as u64,
        );
        metric(
            "myelin_sfu_tracks",
            "gauge",
            "Published tracks.",
            gauges.tracks as u64,
        );
        metric(
            "myelin_sfu_rtp_in_packets_total",
            "counter",
            "RTP packets received from publishers.",
            self.rtp_in.load(Ordering::Relaxed),
        );
        metric(
            "myelin_sfu_rtp_out_packets_total",
            "counter",
            "RTP packets forwarded to subscribers.",
            self.rtp_out.load(Ordering::Relaxed),
        );
        metric(
            "myelin_sfu_rtp_out_bytes_total",
            "counter",
            "RTP payload bytes forwarded to subscribers.",
            self.rtp_out_bytes.load(Ordering::Relaxed),
        );
        metric(
            "myelin_sfu_data_out_packets_total",
            "counter",
            "Data packets relayed, per recipient.",
            self.data_out.load(Ordering::Relaxed),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        Metrics::add(&metrics.rtp_out, 3);
        let text = metrics.render(Gauges {
            rooms: 1,
            participants: 2,
            tracks: 1,
        });
        assert!(text.contains(
            "# TYPE myelin_sfu_rtp_out_packets_total counter\nmyelin_sfu_rtp_out_packets_total 3\n"
        ));
        assert!(text.contains("myelin_sfu_participants 2\n"));
    }
}
