//! Operator settings: the metrics listener (`[metrics]`) and log output (`[log]`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Prometheus metrics (`[metrics]`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the separate listener answering `GET /metrics`; unset = no metrics (the
    /// default). Keep it on loopback or a private network: it has no authentication.
    pub listen: Option<SocketAddr>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging (`[log]`); the filter itself follows `RUST_LOG`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

impl MetricsConfig {
    /// Applies `MYELIN_METRICS_LISTEN` (empty turns the listener off).
    pub(super) fn apply_env(
        &mut self,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        if let Some(v) = lookup("MYELIN_METRICS_LISTEN") {
            self.listen = if v.trim().is_empty() {
                None
            } else {
                Some(super::number("MYELIN_METRICS_LISTEN", v.trim())?)
            };
        }
        Ok(())
    }
}

impl LogConfig {
    /// Applies `MYELIN_LOG_FORMAT` (`text` or `json`).
    pub(super) fn apply_env(
        &mut self,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        if let Some(v) = lookup("MYELIN_LOG_FORMAT") {
            self.format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => anyhow::bail!("MYELIN_LOG_FORMAT={other}: expected text or json"),
            };
        }
        Ok(())
    }
}
