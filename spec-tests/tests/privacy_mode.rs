//! Privacy mode (`io.myelin.privacy` `{"receipts": false}`): the user's read receipts are
//! kept private (their own unread counts still reset) and their typing reaches nobody;
//! switching it off makes later receipts public and changes nothing retroactively.

use serde_json::{json, Value};
use spec_tests::{enc, ephemeral, next_batch, Client, TestServer};

async fn set_privacy(client: &Client, receipts: bool) -> anyhow::Result<()> {
    client
        .put(
            &format!(
                "/user/{}/account_data/io.myelin.privacy",
                enc(&client.user_id)
            ),
            json!({ "receipts": receipts }),
        )
        .await?
        .ok()?;
    Ok(())
}

/// Users with a public read receipt on `event` in the room's `m.receipt`, as `viewer` sees
/// it in a full sync.
async fn public_readers(viewer: &Client, room: &str, event: &str) -> anyhow::Result<Vec<String>> {
    let s = viewer.sync("timeout=0").await?;
    let Some(receipt) = ephemeral(&s, room, "m.receipt") else {
        return Ok(Vec::new());
    };
    Ok(receipt["content"][event]["m.read"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default())
}

fn typing_users(sync: &Value, room: &str) -> Vec<String> {
    ephemeral(sync, room, "m.typing")
        .and_then(|t| t["content"]["user_ids"].as_array())
        .map(|ids| {
            ids.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn privacy_mode_hides_reads_and_typing_but_resets_own_counts() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room).await?;
    carol.join(&room).await?;
    set_privacy(&bob, false).await?;

    let first = alice.say(&room, "one").await?;
    let second = alice.say(&room, "two").await?;
    let before = bob.sync("timeout=0").await?;
    assert_eq!(
        before["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 2,
        "{before}"
    );
    let since = next_batch(&before);

    // A public read receipt and a read marker's m.read both stay private.
    bob.post(
        &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&first)),
        json!({}),
    )
    .await?
    .ok()?;
    bob.post(
        &format!("/rooms/{}/read_markers", enc(&room)),
        json!({"m.fully_read": second, "m.read": second}),
    )
    .await?
    .ok()?;
    // Carol, not in privacy mode, is seen by everyone: the control.
    carol
        .post(
            &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&second)),
            json!({}),
        )
        .await?
        .ok()?;
    assert_eq!(
        public_readers(&alice, &room, &first).await?,
        Vec::<String>::new()
    );
    assert_eq!(
        public_readers(&alice, &room, &second).await?,
        vec![carol.user_id.clone()]
    );

    let mine = bob.sync(&format!("since={since}&timeout=0")).await?;
    let own = ephemeral(&mine, &room, "m.receipt").unwrap_or_else(|| panic!("{mine}"));
    assert!(
        own["content"][&second]["m.read.private"][&bob.user_id].is_object(),
        "Bob sees his own receipt as private: {own}"
    );
    assert!(
        own["content"][&second].get("m.read").is_none() || {
            let readers = own["content"][&second]["m.read"].as_object().unwrap();
            !readers.contains_key(&bob.user_id)
        }
    );
    assert_eq!(
        mine["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0,
        "Bob's own unread count resets: {mine}"
    );

    // Typing: accepted, but nobody sees it.
    let typing_path = format!("/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id));
    bob.put(&typing_path, json!({"typing": true, "timeout": 30000}))
        .await?
        .ok()?;
    carol
        .put(
            &format!("/rooms/{}/typing/{}", enc(&room), enc(&carol.user_id)),
            json!({"typing": true, "timeout": 30000}),
        )
        .await?
        .ok()?;
    let s = alice.sync("timeout=0").await?;
    assert_eq!(typing_users(&s, &room), vec![carol.user_id.clone()], "{s}");

    // Switched off: later receipts are public, the earlier ones stay private.
    set_privacy(&bob, true).await?;
    let third = alice.say(&room, "three").await?;
    bob.post(
        &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&third)),
        json!({}),
    )
    .await?
    .ok()?;
    assert_eq!(
        public_readers(&alice, &room, &third).await?,
        vec![bob.user_id.clone()]
    );
    assert!(!public_readers(&alice, &room, &second)
        .await?
        .contains(&bob.user_id));
    bob.put(&typing_path, json!({"typing": true, "timeout": 30000}))
        .await?
        .ok()?;
    let s = alice.sync("timeout=0").await?;
    let mut typing = typing_users(&s, &room);
    typing.sort();
    let mut want = vec![bob.user_id.clone(), carol.user_id.clone()];
    want.sort();
    assert_eq!(typing, want, "{s}");
    Ok(())
}
