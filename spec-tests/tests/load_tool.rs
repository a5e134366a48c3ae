//! The load tool runs every scenario against a real server at tiny sizes and reports sane
//! figures (no timing assertions: those belong to the benchmark).

use serde_json::Value;
use spec_tests::TestServer;

/// Runs `myelin-load` against `base` and parses its JSON line.
fn run(base: &str, args: &[&str]) -> anyhow::Result<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_myelin-load"))
        .args(["--url", base, "--shared-secret", "load-secret"])
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "myelin-load {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_str(stdout.lines().next().unwrap_or(""))?)
}

#[tokio::test]
async fn every_scenario_runs() -> anyhow::Result<()> {
    // Registration closed: the tool registers through the shared-secret API.
    let server =
        TestServer::start_with(&[("MYELIN_REGISTRATION_SHARED_SECRET", "load-secret")]).await?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state.json").to_str().unwrap().to_owned();
    let base = server.base.clone();
    let [setup, send, fanout, initial, join]: [Value; 5] =
        tokio::task::spawn_blocking(move || -> anyhow::Result<[Value; 5]> {
            Ok([
                run(
                    &base,
                    &["setup", "--users", "3", "--rooms", "2", "--state", &state],
                )?,
                run(
                    &base,
                    &[
                        "send",
                        "--clients",
                        "3",
                        "--seconds",
                        "1",
                        "--state",
                        &state,
                    ],
                )?,
                run(
                    &base,
                    &[
                        "--prefix",
                        "f",
                        "fanout",
                        "--syncers",
                        "3",
                        "--messages",
                        "10",
                        "--rate",
                        "50",
                    ],
                )?,
                run(
                    &base,
                    &[
                        "--prefix",
                        "i",
                        "initial-sync",
                        "--rooms",
                        "2",
                        "--messages",
                        "3",
                        "--repeats",
                        "2",
                    ],
                )?,
                run(&base, &["--prefix", "j", "join-storm", "--users", "4"])?,
            ])
        })
        .await??;
    assert_eq!(setup["users"], 3);
    assert!(send["messages"].as_u64().unwrap() > 0, "{send}");
    assert_eq!(send["errors"], 0);
    assert!(send["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(fanout["deliveries"], 30, "{fanout}");
    assert_eq!(fanout["lost"], 0);
    assert_eq!(fanout["duplicated"], 0);
    assert_eq!(initial["initial_sync"]["count"], 2, "{initial}");
    assert_eq!(join["members"], 5, "{join}");
    assert_eq!(join["errors"], 0);
    Ok(())
}
