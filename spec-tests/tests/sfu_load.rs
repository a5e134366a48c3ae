//! The SFU load tool (`myelin-sfu-load`) at tiny sizes: against the SFU in its own process
//! and against the spawned `myelin-sfu` binary. Checks counts, never timings; loss is
//! printed, not asserted.
//!
//! The SFU binary is `$MYELIN_SFU_BIN`, or `target/debug/myelin-sfu` of this workspace
//! (`spec-tests/run` builds it); a missing binary fails the test.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Result};
use serde_json::Value;

fn sfu_binary() -> PathBuf {
    spec_tests::workspace_binary("MYELIN_SFU_BIN", "myelin-sfu")
}

/// Runs `myelin-sfu-load <args>` and parses its one JSON object.
fn load(args: &[&str]) -> Result<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_myelin-sfu-load"))
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "myelin-sfu-load {args:?} failed: {}\nstderr: {stderr}",
            out.status
        );
    }
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != 1 {
        bail!("expected one JSON line on stdout, got: {stdout}");
    }
    Ok(serde_json::from_str(lines[0])?)
}

fn num(report: &Value, path: &str) -> f64 {
    let mut v = report;
    for part in path.split('.') {
        v = &v[part];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {report}"))
}

/// What the tool measured is consistent with the scenario: media was sent, both
/// subscribers received some of it, nobody received more than was sent, and the latency
/// figures are ordered. Loss is reported, not asserted: these runs share two cores with
/// other tests, and a scheduler stall drops packets on loopback.
fn check(report: &Value) {
    let sent = num(report, "packets_sent");
    assert!(sent > 0.0, "nothing sent: {report}");
    let forwarded = num(report, "packets_forwarded");
    // One subscriber can receive at most `sent`: more means both received.
    assert!(
        forwarded > sent,
        "not both subscribers received media: {report}"
    );
    assert!(forwarded <= sent * 2.0, "more than was sent: {report}");
    assert!(num(report, "forwarded_pps") > 0.0, "{report}");
    assert!(num(report, "latency_ms.p50") > 0.0, "{report}");
    assert!(num(report, "latency_ms.p99") >= num(report, "latency_ms.p50"));
    assert!(num(report, "latency_ms.max") >= num(report, "latency_ms.p99"));
    eprintln!(
        "sfu load: {} of {} packets forwarded, {} % lost",
        forwarded,
        sent * 2.0,
        num(report, "lost_percent")
    );
}

#[test]
fn in_process_sfu_forwards_audio_and_video() -> Result<()> {
    let report = load(&[
        "--publishers",
        "1",
        "--subscribers",
        "2",
        "--duration",
        "2",
        "--video-pps",
        "60",
        "--video-bytes",
        "300",
        "--sfu-threads",
        "1",
        "--quiet",
    ])?;
    assert_eq!(report["sfu"]["mode"], "in-process");
    assert_eq!(report["tracks"]["audio"], true);
    check(&report);
    Ok(())
}

#[test]
fn spawned_sfu_forwards_audio_and_reports_its_cpu() -> Result<()> {
    let bin = sfu_binary();
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --workspace --bins` (spec-tests/run does)",
            bin.display()
        );
    }
    let report = load(&[
        "--sfu-bin",
        bin.to_str().expect("a UTF-8 path"),
        "--publishers",
        "1",
        "--subscribers",
        "2",
        "--duration",
        "2",
        "--quiet",
    ])?;
    assert_eq!(report["sfu"]["mode"], "spawned");
    check(&report);
    // the spawned SFU's CPU time is read from its /proc entry
    assert!(num(&report, "sfu_cpu_secs") >= 0.0, "{report}");
    Ok(())
}

#[test]
fn refuses_unbounded_or_remote_runs() -> Result<()> {
    for args in [
        &["--subscribers", "100000"][..],
        &["--duration", "100000"][..],
        &["--no-audio"][..],
        &[
            "--url",
            "ws://192.0.2.1:7880",
            "--api-key",
            "k",
            "--api-secret",
            "s",
        ][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_myelin-sfu-load"))
            .args(args)
            .arg("--quiet")
            .output()?;
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(out.stdout.is_empty());
    }
    Ok(())
}
