//! Interop with matrix-rust-sdk 0.18 (the SDK under Element X): native simplified sliding
//! sync through matrix-sdk-ui's `SyncService`/`RoomListService`, an encrypted DM whose
//! messages decrypt on the other side, and media. The check is the `myelin-sdk-interop`
//! program in `spec-tests/sdk-interop` (its own workspace); `spec-tests/run` builds it and
//! sets `MYELIN_SDK_INTEROP_BIN`. Without it this test fails rather than skipping.

use std::time::Duration;

use spec_tests::{run_program, TestServer};

/// The SDK runs take turns: each runs two full clients with their sync loops, and
/// matrix-sdk's verification steps time out after a minute, which four runs at once on a
/// 2-core machine need not be given. (matrix-sdk sends the steps it takes by itself only
/// when its encryption sync starts a request; the interop program keeps those syncs
/// moving with to-device traffic, see `keep_encryption_syncs_moving` there.)
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the interop program against a new server with `flag` (its turn taken); its
/// stdout once it succeeds, else an error with its output and the server log.
async fn run_sdk(flag: &str, rust_log: &str, what: &str) -> anyhow::Result<String> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let bin = std::env::var("MYELIN_SDK_INTEROP_BIN").map_err(|_| {
        anyhow::anyhow!(
            "MYELIN_SDK_INTEROP_BIN is not set: run the tests with spec-tests/run, which builds spec-tests/sdk-interop"
        )
    })?;
    let server = TestServer::start().await?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg(server.base.clone())
        .arg(flag)
        .env("RUST_LOG", rust_log);
    let out = run_program(cmd, Duration::from_secs(300)).await?;
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert!(
        out.status.success(),
        "matrix-sdk {what} failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        server.log()
    );
    Ok(out.stdout)
}

#[tokio::test]
async fn matrix_rust_sdk_client_works() -> anyhow::Result<()> {
    let stdout = run_sdk(
        "--media",
        "warn,matrix_sdk_crypto::backups=error",
        "interop",
    )
    .await?;
    assert!(stdout.contains("matrix-sdk interop: ok"), "{stdout}");
    assert!(stdout.contains("bob decrypted alice's message"), "{stdout}");
    assert!(stdout.contains("alice decrypted bob's reply"), "{stdout}");
    assert!(
        stdout.contains("media upload, authenticated download and thumbnail work"),
        "{stdout}"
    );
    Ok(())
}

/// Interactive verification with matrix-rust-sdk: both users bootstrap cross-signing,
/// Alice requests verification in their DM, both run SAS with emoji and confirm, and each
/// then sees the other's identity as verified, also after querying the server again.
#[tokio::test]
async fn matrix_rust_sdk_sas_verification_completes() -> anyhow::Result<()> {
    let stdout = run_sdk(
        "--verify",
        "warn,matrix_sdk_crypto::backups=error",
        "verification",
    )
    .await?;
    assert!(
        stdout.contains("SAS verification done: alice and bob see each other verified"),
        "{stdout}"
    );
    Ok(())
}

/// Recovery with matrix-rust-sdk: Alice enables recovery (secret storage and key backup);
/// a new device of hers recovers with the recovery key and decrypts the DM's earlier
/// messages, fetching their keys from the backup after the first decryption failure, in
/// the live timeline, a permalink (event-focused) timeline, a thread timeline and the
/// pinned-events timeline.
#[tokio::test]
async fn matrix_rust_sdk_recovery_redecrypts_history() -> anyhow::Result<()> {
    let stdout = run_sdk("--recover", "warn", "recovery").await?;
    assert!(
        stdout.contains("recovery re-decrypted the earlier messages from the key backup"),
        "{stdout}"
    );
    for line in [
        "a permalink timeline decrypts around its event",
        "a thread timeline decrypts its replies",
        "the pinned events timeline decrypts bob's pinned reply",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    Ok(())
}

/// Shared room history on invite (MSC4268) with matrix-rust-sdk: Alice (cross-signed)
/// writes in an encrypted room with shared history and invites Charlie; her client
/// uploads the room's keys as an encrypted bundle to the media repository and sends it
/// to Charlie's device over to-device; Charlie joins, pages back and decrypts what was
/// said before his invite.
#[tokio::test]
async fn matrix_rust_sdk_shares_history_on_invite() -> anyhow::Result<()> {
    let stdout = run_sdk("--share-history", "warn", "shared history").await?;
    assert!(
        stdout.contains("charlie decrypted the history shared on invite"),
        "{stdout}"
    );
    Ok(())
}
