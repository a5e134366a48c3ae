//! Room kinds through a real client: matrix-js-sdk (the SDK under Element Web) reads a
//! virtual room's kind and roles, sees text mute grey out a member's composer, promotes a
//! moderator and is refused raising anyone to 100 (`spec-tests/js/room_kinds.mjs`).
//! `spec-tests/run` installs the SDK and the Node.js it supports into
//! `spec-tests/js/node_modules` and sets `MYELIN_JS_NODE`; without it this test fails
//! rather than skipping.

use std::{path::Path, time::Duration};

use spec_tests::{run_program, TestServer};

#[tokio::test]
async fn matrix_js_sdk_reads_room_kinds_and_roles() -> anyhow::Result<()> {
    let node = std::env::var("MYELIN_JS_NODE").map_err(|_| {
        anyhow::anyhow!(
            "MYELIN_JS_NODE is not set: run the tests with spec-tests/run, which installs matrix-js-sdk"
        )
    })?;
    let server = TestServer::start().await?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("js/room_kinds.mjs");
    let mut cmd = std::process::Command::new(node);
    cmd.arg(script).arg(&server.base);
    let out = run_program(cmd, Duration::from_secs(180)).await?;
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert!(
        out.status.success(),
        "matrix-js-sdk room kinds failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        out.status,
        server.log()
    );
    assert!(stdout.contains("js-sdk room kinds: ok"), "{stdout}");
    Ok(())
}
