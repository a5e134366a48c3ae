//! Unit tests of the push service: the shared evaluation, the record layout and the move
//! of earlier records.

use std::collections::BTreeMap;

use ruma::{
    push::{Action, FlattenedJson, PushConditionRoomCtx, Ruleset},
    serde::Raw,
    OwnedRoomId, OwnedUserId, UInt, UserId,
};
use serde_json::{json, Value};

use super::{
    evaluate::matching_actions,
    store::{record_for, EventPush},
    PushRecord, PushService,
};
use crate::{
    events::Pdu,
    rooms::Membership,
    storage::{keys, Batch},
    Result,
};

fn uid(name: &str) -> OwnedUserId {
    UserId::parse(format!("@{name}:x")).unwrap()
}

/// What full evaluation gives each member: the reference the shortcut must match.
fn evaluated_one_by_one(push: &PushService, pdu: &Pdu) -> BTreeMap<String, Value> {
    let members = push.rooms.members(&pdu.room_id).unwrap();
    let raw: Raw<Value> =
        Raw::from_json(serde_json::value::to_raw_value(&pdu.to_client_event()).unwrap());
    let flattened = FlattenedJson::from_raw(&raw);
    let count = UInt::try_from(members.count(Membership::Join) as u64).unwrap();
    let mut out = BTreeMap::new();
    // The joined members but the sender, and the invitee of an invite.
    let invitee = pdu
        .state_key
        .as_deref()
        .filter(|_| pdu.kind.to_string() == "m.room.member")
        .and_then(|k| <&UserId>::try_from(k).ok())
        .filter(|u| members.get(u) == Some(Membership::Invite) && *u != pdu.sender);
    for user in members.joined().filter(|u| *u != pdu.sender).chain(invitee) {
        let content = pdu.content_value();
        let relates = &content["m.relates_to"];
        let subscribed = relates["rel_type"] == "m.thread"
            && relates["event_id"]
                .as_str()
                .and_then(|root| ruma::EventId::parse(root).ok())
                .is_some_and(|root| {
                    push.users
                        .thread_subscription(user, &pdu.room_id, &root)
                        .unwrap()
                        .is_some()
                });
        let ctx = PushConditionRoomCtx::new(
            pdu.room_id.clone(),
            count,
            user.to_owned(),
            push.display_name(&pdu.room_id, user).unwrap(),
        )
        .with_power_levels(push.power_levels_ctx(&pdu.room_id).unwrap())
        .with_has_thread_subscription_fn(move |_| Box::pin(std::future::ready(subscribed)));
        let ruleset = push.ruleset(user).unwrap();
        let actions = matching_actions(&ruleset, &flattened, &ctx)
            .unwrap()
            .to_vec();
        if actions.iter().any(Action::should_notify) {
            out.insert(user.to_string(), json!(actions));
        }
    }
    out
}

#[tokio::test]
async fn members_on_default_rules_share_one_evaluation_with_the_same_result() {
    use crate::rooms::{CreateRoom, MemberProfile, NewEvent};
    let s = crate::services::Services::in_memory(crate::config::Config::default()).unwrap();
    let user = |n: &str| UserId::parse(format!("@{n}:localhost")).unwrap();
    let (alice, bob, carol, dave, erin) = (
        user("alice"),
        user("bob"),
        user("carol"),
        user("dave"),
        user("erin"),
    );
    let room = s
        .rooms
        .create_room(
            &alice,
            CreateRoom {
                preset: Some("public_chat".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for (u, name) in [
        (&bob, "Bobby Tables"),
        (&carol, "carol"),
        (&dave, "D"),
        (&erin, "Erin"),
    ] {
        let profile = MemberProfile {
            displayname: Some(name.into()),
            avatar_url: None,
        };
        s.rooms.join(&room, u, &profile, None).await.unwrap();
    }
    // Erin has rules of her own: everything from alice highlights.
    s.push
        .save_ruleset(&erin, from_alice(&erin, &alice))
        .await
        .unwrap();

    // A thread Bob and Erin (own rules) are subscribed to, and one nobody is.
    let mut roots = Vec::new();
    for body in ["a thread", "another thread"] {
        let (root, _) = s
            .rooms
            .send_to(
                &room,
                &alice,
                NewEvent::message("m.room.message", json!({"msgtype": "m.text", "body": body})),
            )
            .await
            .unwrap();
        roots.push(root);
    }
    for u in [&bob, &erin] {
        s.users
            .subscribe_thread(u, &room, &roots[0], crate::users::Subscription::Manual)
            .unwrap();
    }
    let in_thread = |root: &ruma::OwnedEventId, mentions: Value| {
        json!({"msgtype": "m.text", "body": "in a thread", "m.mentions": mentions,
            "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    };
    let contents = [
        in_thread(&roots[0], json!({})),
        in_thread(&roots[1], json!({})),
        in_thread(&roots[1], json!({"user_ids": [carol.as_str()]})),
        json!({"msgtype": "m.text", "body": "plain words"}),
        json!({"msgtype": "m.text", "body": "hey Bobby Tables!"}),
        json!({"msgtype": "m.text", "body": "hi", "m.mentions": {"user_ids": [carol.as_str()]}}),
        json!({"msgtype": "m.notice", "body": "a notice for dave"}),
        json!({"msgtype": "m.text", "body": "@room", "m.mentions": {"room": true}}),
    ];
    let frank = user("frank");
    let state = [
        // Membership events end at `.m.rule.member_event`, before any rule that looks
        // for names (this one names Bob), except the invite of Frank (`invite_for_me`).
        (
            "m.room.member",
            alice.as_str(),
            json!({"membership": "join", "displayname": "Bobby Tables fan"}),
        ),
        (
            "m.room.member",
            frank.as_str(),
            json!({"membership": "invite", "displayname": "carol"}),
        ),
        // Other state naming Bob and Carol goes through the naming rules.
        ("org.example.note", "", json!({"body": "ask Bobby Tables"})),
        (
            "m.room.topic",
            "",
            json!({"topic": "Bobby Tables and carol", "m.mentions": {"user_ids": [carol.as_str()]}}),
        ),
        (
            "org.example.note",
            "2",
            json!({"body": "hi", "m.mentions": {"user_ids": [carol.as_str()]}}),
        ),
    ];
    let events = contents
        .into_iter()
        .map(|c| NewEvent::message("m.room.message", c))
        .chain(state.into_iter().map(|(t, k, c)| NewEvent::state(t, k, c)));
    let mut notified = Vec::new();
    for event in events {
        notified.push(sent_and_evaluated(&s, &room, &alice, event).await);
    }
    // In the subscribed thread its subscribers are notified; in the other only a mention
    // notifies. Erin's own rule (everything from Alice) comes before the thread rules.
    let ids = |users: &[&OwnedUserId]| users.iter().map(|u| u.to_string()).collect::<Vec<_>>();
    assert_eq!(notified[0], ids(&[&bob, &erin]));
    assert_eq!(notified[1], ids(&[&erin]));
    assert_eq!(notified[2], ids(&[&carol, &erin]));
    // Alice's new display name names Bob, but a membership event notifies nobody (Erin's
    // own rule takes everything from Alice); the invite notifies Frank.
    assert_eq!(notified[8], ids(&[&erin]));
    assert_eq!(notified[9], ids(&[&erin, &frank]));
    // Other state: a mention by id notifies Carol; Bob's display name in a body does not
    // (the server default has no display-name rule).
    assert_eq!(notified[10], ids(&[&erin]));
    assert_eq!(notified[11], ids(&[&carol, &erin]));
    assert_eq!(notified[12], ids(&[&carol, &erin]));

    // The room's list of members with own rules is kept. Gina, on rules of her own
    // (everything from Alice), joins after it was built: a membership event is then
    // evaluated on her rules too; so is Bob's once he takes rules of his own.
    let gina = user("gina");
    s.push
        .save_ruleset(&gina, from_alice(&gina, &alice))
        .await
        .unwrap();
    let member = |u: &UserId, name: &str| {
        NewEvent::state(
            "m.room.member",
            u.as_str(),
            json!({"membership": "join", "displayname": name}),
        )
    };
    assert_eq!(
        sent_and_evaluated(&s, &room, &alice, member(&alice, "A")).await,
        ids(&[&erin])
    );
    assert_eq!(
        sent_and_evaluated(&s, &room, &gina, member(&gina, "Gina")).await,
        ids(&[])
    );
    assert_eq!(
        sent_and_evaluated(&s, &room, &alice, member(&alice, "Alice")).await,
        ids(&[&erin, &gina])
    );
    s.push
        .save_ruleset(&bob, from_alice(&bob, &alice))
        .await
        .unwrap();
    assert_eq!(
        sent_and_evaluated(&s, &room, &alice, member(&alice, "Al")).await,
        ids(&[&bob, &erin, &gina])
    );
}

/// The server default plus an override that highlights everything from `sender`.
fn from_alice(user: &UserId, sender: &UserId) -> Ruleset {
    let mut rules = Ruleset::server_default(user);
    rules
        .insert(
            ruma::push::NewPushRule::Override(ruma::push::NewConditionalPushRule::new(
                "from_alice".into(),
                vec![ruma::push::PushCondition::EventMatch(
                    ruma::push::EventMatchConditionData::new("sender".into(), sender.to_string()),
                )],
                vec![
                    Action::Notify,
                    Action::SetTweak(ruma::push::Tweak::Highlight(
                        ruma::push::HighlightTweakValue::Yes,
                    )),
                ],
            )),
            None,
            None,
        )
        .unwrap();
    rules
}

/// Sends `event` as `sender`, checks that the shared evaluation gives every member what
/// evaluating them one by one gives, and returns who it notifies.
async fn sent_and_evaluated(
    s: &crate::services::Services,
    room: &ruma::RoomId,
    sender: &UserId,
    event: crate::rooms::NewEvent,
) -> Vec<String> {
    let content = event.content.clone();
    let guard = s.rooms.lock(room).await;
    let (id, pos) = s.rooms.send(guard, sender, event).await.unwrap();
    let pdu = s.rooms.get_pdu(&id).unwrap().unwrap();
    let expected = evaluated_one_by_one(&s.push, &pdu);
    let got: BTreeMap<String, Value> = match s.push.evaluate(&pdu, pos).unwrap() {
        Some(e) => e
            .record
            .groups
            .iter()
            .flat_map(|g| g.users.iter().map(|u| (u.clone(), json!(g.actions))))
            .collect(),
        None => BTreeMap::new(),
    };
    assert_eq!(got, expected, "for {content}");
    got.into_keys().collect()
}

#[test]
fn the_naming_rules_start_after_the_membership_rule() {
    let nobody = uid("nobody");
    let ruleset = Ruleset::server_default(&nobody);
    let ids: Vec<&str> = ruleset.iter().map(|r| r.rule_id()).collect();
    let from = super::evaluate::first_naming_rule();
    assert_eq!(ids[from], ".m.rule.is_user_mention");
    let at = |id: &str| ids.iter().position(|r| *r == id).unwrap();
    assert!(at(".m.rule.member_event") < from);
    assert!(at(".m.rule.invite_for_me") < from);
    // The server default no longer looks for display names or localparts (the legacy
    // mention rules are gone): only mentions by user id single a member out.
    assert!(!super::evaluate::default_rules_look_for_names());
}

#[test]
fn one_record_per_event_groups_recipients_by_their_actions() {
    let mut record = EventPush {
        event_id: "$e".into(),
        ts: 5,
        groups: Vec::new(),
    };
    let loud = [
        Action::Notify,
        Action::SetTweak(ruma::push::Tweak::Highlight(true.into())),
    ];
    record.add(&uid("alice"), &[Action::Notify]);
    record.add(&uid("bob"), &loud);
    record.add(&uid("carol"), &[Action::Notify]);
    record.add(&uid("dan"), &loud);
    let raw = serde_json::to_vec(&record).unwrap();
    let stored: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(stored["g"][0], json!({"u": ["@alice:x", "@carol:x"]}));
    assert_eq!(stored["g"][1]["u"], json!(["@bob:x", "@dan:x"]));
    assert_eq!(stored["g"].as_array().unwrap().len(), 2);

    let alice = record_for(&raw, &uid("alice")).unwrap();
    assert_eq!((alice.event_id.as_str(), alice.ts), ("$e", 5));
    assert!(!alice.highlight);
    assert!(record_for(&raw, &uid("dan")).unwrap().highlight);
    assert_eq!(record_for(&raw, &uid("dan")).unwrap().actions.len(), 2);
    // Not named (a prefix of a named ID does not count).
    assert!(record_for(&raw, &uid("eve")).is_none());
    assert!(record_for(&raw, &uid("ali")).is_none());
}

#[tokio::test]
async fn per_recipient_records_of_earlier_versions_are_moved_at_start() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::config::Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    let room: OwnedRoomId = "!r:x".try_into().unwrap();
    {
        let s = crate::services::Services::open(config.clone()).unwrap();
        let mut batch = Batch::new();
        let old = |user: &str, pos: u64| {
            keys::KeyBuilder::new()
                .str(user)
                .str(room.as_str())
                .u64(pos)
                .build()
        };
        let t = &s.storage().trees.push_actions;
        batch.insert_json(t, &old("@alice:x", 3), &json!({"e": "$a", "t": 1}))?;
        batch.insert_json(t, &old("@bob:x", 3), &json!({"e": "$a", "t": 1}))?;
        batch.insert_json(
            t,
            &old("@alice:x", 7),
            &json!({"event_id": "$b", "highlight": true, "ts": 2,
                    "actions": ["notify", {"set_tweak": "highlight"}]}),
        )?;
        s.storage().commit(batch)?;
        s.storage().flush()?;
    }
    let s = crate::services::Services::reopen(config).await.unwrap();
    assert!(s
        .storage()
        .trees
        .push_actions
        .scan_prefix(&[])
        .next()
        .is_none());
    let alice = uid("alice");
    let page = s.push.notifications(&alice, None, 10, false)?;
    // Alice is in no room here, so the listing (which walks her rooms) is empty; the
    // counts read the records directly.
    assert!(page.items.is_empty());
    assert_eq!(s.push.count_unread(&alice, &room, 0)?, (2, 1));
    assert_eq!(s.push.count_unread(&alice, &room, 3)?, (1, 1));
    assert_eq!(s.push.count_unread(&uid("bob"), &room, 0)?, (1, 0));
    assert_eq!(s.push.count_unread(&uid("carol"), &room, 0)?, (0, 0));
    Ok(())
}

#[test]
fn records_are_stored_short_and_old_records_still_read() {
    let plain = PushRecord {
        event_id: "$e".into(),
        highlight: false,
        actions: vec![Action::Notify],
        ts: 7,
    };
    assert_eq!(
        serde_json::to_value(&plain).unwrap(),
        json!({"e": "$e", "t": 7})
    );
    let loud = PushRecord {
        highlight: true,
        actions: vec![
            Action::Notify,
            Action::SetTweak(ruma::push::Tweak::Sound("default".into())),
        ],
        ..plain.clone()
    };
    let back: PushRecord = serde_json::from_slice(&serde_json::to_vec(&loud).unwrap()).unwrap();
    assert!(back.highlight);
    assert_eq!(back.actions.len(), 2);
    let back: PushRecord = serde_json::from_value(json!({"e": "$e", "t": 7})).unwrap();
    assert!(!back.highlight);
    assert!(matches!(back.actions.as_slice(), [Action::Notify]));
    // The long form written by earlier versions.
    let old: PushRecord = serde_json::from_value(json!({
        "event_id": "$old", "highlight": true, "actions": ["notify"], "ts": 9
    }))
    .unwrap();
    assert_eq!(
        (old.event_id.as_str(), old.highlight, old.ts),
        ("$old", true, 9)
    );
}
