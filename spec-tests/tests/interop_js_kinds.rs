//! Room kinds through a real client: matrix-js-sdk (the SDK under Element Web) reads a
//! virtual room's kind and roles, sees text mute grey out a member's composer, promotes a
//! moderator and is refused raising anyone to 100 (`spec-tests/js/room_kinds.mjs`).

use spec_tests::{run_js_script, TestServer};

#[tokio::test]
async fn matrix_js_sdk_reads_room_kinds_and_roles() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    run_js_script(&server, "room_kinds.mjs", "js-sdk room kinds").await
}
