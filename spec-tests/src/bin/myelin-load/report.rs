//! Figures: histograms, latency summaries, RSS, progress lines and the table.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

pub(crate) fn progress(line: &str) {
    eprint!("\r\x1b[2K{line}");
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

pub(crate) fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 100.0).round() / 100.0
}

pub(crate) fn latency_json(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

pub(crate) fn rss(pid: Option<u32>) -> Value {
    let Some(pid) = pid else { return Value::Null };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Value::Null;
    };
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb / 1024)
    };
    json!({ "rss_mib": field("VmRSS:"), "peak_rss_mib": field("VmHWM:") })
}

pub(crate) fn print_table(v: &Value, prefix: &str) {
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if val.is_object() {
                print_table(val, &key);
            } else {
                println!("  {key:<32} {val}");
            }
        }
    }
}
