//! Prometheus metrics: the series names and the recorder. The `metrics` crate's macros
//! record into the process's recorder, which `myelin serve` installs only when
//! `metrics.listen` is set; without it every recording is a no-op.
//!
//! | series | kind | what |
//! |---|---|---|
//! | `myelin_http_requests_total{method,route,status}` | counter | requests answered, per matched route template |
//! | `myelin_http_request_duration_seconds{method,route}` | histogram | time to answer (long-polls included) |
//! | `myelin_events_appended_total` | counter | events written to room timelines |
//! | `myelin_storage_flush_duration_seconds` | histogram | each group-commit flush (fsync) |
//! | `myelin_sync_parked` | gauge | long-polling syncs waiting for something new |
//! | `myelin_push_queue_length` | gauge | pushes queued or being delivered to gateways |
//! | `myelin_sfu_rooms`, `_participants`, `_tracks` | gauge | the embedded SFU's calls |
//! | `myelin_sfu_rtp_in_packets_total`, `_rtp_out_packets_total`, `_rtp_out_bytes_total`, `_data_out_packets_total` | counter | media the SFU forwarded |

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered.
pub const HTTP_REQUESTS: &str = "myelin_http_requests_total";
/// Time to answer a request.
pub const HTTP_DURATION: &str = "myelin_http_request_duration_seconds";
/// Events appended to room timelines.
pub const EVENTS_APPENDED: &str = "myelin_events_appended_total";
/// Duration of each storage flush.
pub const STORAGE_FLUSH_DURATION: &str = "myelin_storage_flush_duration_seconds";
/// Parked long-polls.
pub const SYNCS_PARKED: &str = "myelin_sync_parked";
/// Pushes waiting for or in delivery.
pub const PUSH_QUEUE: &str = "myelin_push_queue_length";

/// Histogram buckets (seconds) for every `_seconds` series: from a fast fsync to a
/// two-minute long-poll.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Installs the Prometheus recorder for this process; call once, before the services
/// start. The handle renders the exposition.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
        .install_recorder()?;
    metrics::describe_counter!(HTTP_REQUESTS, "Requests answered, per route template.");
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time to answer a request, per route template."
    );
    metrics::describe_counter!(EVENTS_APPENDED, "Events appended to room timelines.");
    metrics::describe_histogram!(
        STORAGE_FLUSH_DURATION,
        metrics::Unit::Seconds,
        "Duration of each group-commit flush (fsync)."
    );
    metrics::describe_gauge!(SYNCS_PARKED, "Long-polling syncs waiting for news.");
    metrics::describe_gauge!(PUSH_QUEUE, "Pushes queued or being delivered.");
    // Present from the first scrape, before anything happened.
    metrics::counter!(EVENTS_APPENDED).absolute(0);
    metrics::gauge!(PUSH_QUEUE).set(0.0);
    Ok(handle)
}
