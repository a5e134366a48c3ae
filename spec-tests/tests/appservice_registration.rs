//! Application-service registration files: a bad one stops the server at start with the
//! file and field at fault, and `myelin appservice check` validates files without a server.

use std::process::Command;

use spec_tests::{fake_appservice::write_registration, server_binary, TestServer};

/// Starting with `files` fails; returns the server's error output.
async fn refused(files: &[&std::path::Path]) -> String {
    let list: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let list = list.join(",");
    match TestServer::start_with(&[("MYELIN_APPSERVICES", list.as_str())]).await {
        Ok(_) => panic!("the server started with {list}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn bad_registrations_stop_the_server_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_registration(dir.path(), "br", None).unwrap();
    let text = std::fs::read_to_string(&good).unwrap();

    let bad_regex = dir.path().join("bad_regex.yaml");
    std::fs::write(&bad_regex, text.replace("@br_.*", "@br_(.*")).unwrap();
    let log = refused(&[&bad_regex]).await;
    let expected = format!(
        "{}: namespaces.users[0].regex: invalid regex",
        bad_regex.display()
    );
    assert!(log.contains(&expected), "{log}");

    // A second file reusing the first one's hs_token as its as_token.
    let reuse = dir.path().join("reuse.yaml");
    std::fs::write(
        &reuse,
        text.replace("id: br", "id: other")
            .replace("as_token: br_as", "as_token: br_hs")
            .replace("hs_token: br_hs", "hs_token: other_hs")
            .replace("br_bot", "other_bot")
            .replace("@br_", "@other_")
            .replace("#br_", "#other_"),
    )
    .unwrap();
    let log = refused(&[&good, &reuse]).await;
    let expected = format!("{}: as_token: is already a token of", reuse.display());
    assert!(log.contains(&expected), "{log}");

    // The same exclusive namespace claimed twice.
    let overlap = dir.path().join("overlap.yaml");
    std::fs::write(
        &overlap,
        text.replace("id: br", "id: other")
            .replace("br_as", "other_as")
            .replace("br_hs", "other_hs")
            .replace("br_bot", "other_bot"),
    )
    .unwrap();
    let log = refused(&[&good, &overlap]).await;
    let expected = format!("{}: namespaces.users[0].regex: ", overlap.display());
    assert!(log.contains(&expected), "{log}");

    let missing = dir.path().join("missing.yaml");
    let log = refused(&[&missing]).await;
    let expected = format!("{}: (file): cannot read", missing.display());
    assert!(log.contains(&expected), "{log}");

    // The good file alone: the server starts.
    TestServer::start_with(&[("MYELIN_APPSERVICES", good.to_str().unwrap())])
        .await
        .unwrap();
}

#[tokio::test]
async fn appservice_check_validates_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_registration(dir.path(), "br", Some("http://127.0.0.1:9")).unwrap();
    let out = Command::new(server_binary())
        .args(["appservice", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), format!("{}: ok (id \"br\")", good.display()));

    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(&good).unwrap();
    std::fs::write(
        &bad,
        text.replace("url: \"http://127.0.0.1:9\"", "url: \"ftp://x\""),
    )
    .unwrap();
    let out = Command::new(server_binary())
        .args(["appservice", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: url: \"ftp://x\" is not an http(s) URL",
            bad.display()
        )),
        "{stderr}"
    );
}
