//! Metrics over HTTP: the middleware counting and timing each request by its matched
//! route template (never the raw path, which holds ids), and the separate listener's
//! `GET /metrics` (Prometheus text).

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    http::{header, Method},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::metrics::{HTTP_DURATION, HTTP_REQUESTS};

/// Records `myelin_http_requests_total` and `myelin_http_request_duration_seconds`.
pub(super) async fn track_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = known_method(req.method());
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// The method as a label; clients can send any token, which must not grow the series.
fn known_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The metrics listener's app: `GET /metrics`. `refresh` sets the gauges read at scrape
/// time (parked syncs, SFU rooms) just before rendering.
pub fn exporter(handle: PrometheusHandle, refresh: Arc<dyn Fn() + Send + Sync>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            let refresh = refresh.clone();
            async move {
                refresh();
                handle.run_upkeep();
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}
