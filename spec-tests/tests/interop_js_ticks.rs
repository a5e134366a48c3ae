//! Ticks through a real client: matrix-js-sdk (the SDK under Element Web) sees the
//! `io.myelin.delivered` receipt that another client's sync produced through its receipt
//! API, and `/ticks` goes from delivered to read (`spec-tests/js/ticks.mjs`).

use spec_tests::{run_js_script, TestServer};

#[tokio::test]
async fn matrix_js_sdk_sees_delivered_receipts() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    run_js_script(&server, "ticks.mjs", "js-sdk ticks").await
}
