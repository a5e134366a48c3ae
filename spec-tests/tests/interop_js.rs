//! Interop with matrix-js-sdk (the SDK under Element Web) and its Rust crypto: two users
//! register, sync to PREPARED, open an encrypted DM, exchange a message each way and
//! decrypt it, and read the default push rules (`spec-tests/js/interop.mjs`).
//! `spec-tests/run` installs the SDK and the Node.js it supports into
//! `spec-tests/js/node_modules` and sets `MYELIN_JS_NODE`; without it this test fails
//! rather than skipping.

use std::{path::Path, time::Duration};

use spec_tests::{run_program, TestServer};

#[tokio::test]
async fn matrix_js_sdk_with_rust_crypto_works() -> anyhow::Result<()> {
    let node = std::env::var("MYELIN_JS_NODE").map_err(|_| {
        anyhow::anyhow!(
            "MYELIN_JS_NODE is not set: run the tests with spec-tests/run, which installs matrix-js-sdk"
        )
    })?;
    let server = TestServer::start().await?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("js/interop.mjs");
    let base = server.base.clone();
    let mut cmd = std::process::Command::new(node);
    cmd.arg(script).arg(base);
    let out = run_program(cmd, Duration::from_secs(300)).await?;
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert!(
        out.status.success(),
        "matrix-js-sdk interop failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        out.status,
        server.log()
    );
    assert!(stdout.contains("js-sdk interop: ok"), "{stdout}");
    Ok(())
}
