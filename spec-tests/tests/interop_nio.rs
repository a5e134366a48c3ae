//! Interop with matrix-nio (Python): register, log in, create, invite, join, send, sync,
//! paginate. `spec-tests/run` installs nio into `spec-tests/.venv` and sets
//! `MYELIN_NIO_PYTHON`; without it this test fails rather than skipping.

use std::{path::Path, time::Duration};

use spec_tests::{run_program, TestServer};

#[tokio::test]
async fn matrix_nio_client_works() -> anyhow::Result<()> {
    let python = std::env::var("MYELIN_NIO_PYTHON").map_err(|_| {
        anyhow::anyhow!("MYELIN_NIO_PYTHON is not set: run the tests with spec-tests/run, which installs matrix-nio")
    })?;
    let server = TestServer::start().await?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/nio_interop.py");
    let base = server.base.clone();
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script).arg(base);
    let out = run_program(cmd, Duration::from_secs(180)).await?;
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert!(
        out.status.success(),
        "nio interop failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        server.log()
    );
    assert!(stdout.contains("nio interop: ok"), "{stdout}");
    Ok(())
}
