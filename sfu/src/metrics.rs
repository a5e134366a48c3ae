//! The SFU's Prometheus series, recorded with the `metrics` crate into whatever recorder
//! the process installed: `myelin serve`'s exporter for the embedded SFU, or the
//! standalone `myelin-sfu`'s own (`metrics_listen`). Without a recorder they cost nothing.

use metrics::{counter, gauge, Counter};

/// Process-wide SFU counters, shared by every room (passed down, never global). Build it
/// after the recorder is installed: the handles are bound to the recorder at creation.
pub struct Metrics {
    /// RTP packets received from publishers.
    pub rtp_in: Counter,
    /// RTP packets written to subscribers.
    pub rtp_out: Counter,
    /// RTP payload bytes written to subscribers.
    pub rtp_out_bytes: Counter,
    /// Data packets relayed (counted once per recipient).
    pub data_out: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        metrics::describe_gauge!("myelin_sfu_rooms", "Open rooms.");
        metrics::describe_gauge!("myelin_sfu_participants", "Connected participants.");
        metrics::describe_gauge!("myelin_sfu_tracks", "Published tracks.");
        metrics::describe_counter!(
            "myelin_sfu_rtp_in_packets_total",
            "RTP packets received from publishers."
        );
        metrics::describe_counter!(
            "myelin_sfu_rtp_out_packets_total",
            "RTP packets forwarded to subscribers."
        );
        metrics::describe_counter!(
            "myelin_sfu_rtp_out_bytes_total",
            "RTP payload bytes forwarded to subscribers."
        );
        metrics::describe_counter!(
            "myelin_sfu_data_out_packets_total",
            "Data packets relayed, per recipient."
        );
        Metrics {
            rtp_in: counter!("myelin_sfu_rtp_in_packets_total"),
            rtp_out: counter!("myelin_sfu_rtp_out_packets_total"),
            rtp_out_bytes: counter!("myelin_sfu_rtp_out_bytes_total"),
            data_out: counter!("myelin_sfu_data_out_packets_total"),
        }
    }
}

/// Gauges taken at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub rooms: usize,
    pub participants: usize,
    pub tracks: usize,
}

impl Metrics {
    pub fn add(counter: &Counter, n: u64) {
        counter.increment(n);
    }
}

impl Gauges {
    /// Sets the `myelin_sfu_rooms`, `_participants` and `_tracks` gauges.
    pub fn publish(self) {
        gauge!("myelin_sfu_rooms").set(self.rooms as f64);
        gauge!("myelin_sfu_participants").set(self.participants as f64);
        gauge!("myelin_sfu_tracks").set(self.tracks as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn counters_and_gauges_reach_the_recorder() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let metrics = Metrics::default();
            Metrics::add(&metrics.rtp_out, 3);
            Gauges {
                rooms: 1,
                participants: 2,
                tracks: 1,
            }
            .publish();
        });
        let text = handle.render();
        assert!(
            text.contains("myelin_sfu_rtp_out_packets_total 3\n"),
            "{text}"
        );
        assert!(text.contains("myelin_sfu_participants 2\n"), "{text}");
    }
}
