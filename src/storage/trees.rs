//! Every logical tree, its prefix byte and its key layout. Keys are built only with
//! [`super::keys`]: string parts end in 0xFF, integers are big-endian u64.

use std::sync::Arc;

use super::{engine::Engine, Tree};

macro_rules! trees {
    ($( $(#[doc = $doc:literal])* $name:ident = $prefix:literal, )*) => {
        /// All logical trees.
        pub struct Trees {
            $( $(#[doc = $doc])* pub $name: Tree, )*
        }

        impl Trees {
            pub(super) fn new(engine: &Arc<dyn Engine>) -> Trees {
                Trees { $( $name: Tree::new(engine.clone(), $prefix), )* }
            }

            /// Every tree with its name, for checks and tools.
            pub fn each(&self) -> Vec<(&'static str, &Tree)> {
                vec![ $( (stringify!($name), &self.$name), )* ]
            }

            /// (name, prefix) of every tree, for checks and tools.
            pub fn all() -> &'static [(&'static str, u8)] {
                &[ $( (stringify!($name), $prefix), )* ]
            }
        }
    };
}

trees! {
    /// `name` → value: storage format version, counters.
    meta = 0x01,

    // ---- users ----
    /// `user_id` → JSON account record (password hash, admin, guest, deactivated).
    users = 0x10,
    /// `sha256(access_token)` → JSON `{user_id, device_id}`.
    tokens = 0x11,
    /// `user_id, device_id` → JSON device record.
    devices = 0x12,
    /// `user_id` → JSON profile `{displayname, avatar_url}`.
    profiles = 0x13,
    /// `user_id, room_id or "", type` → JSON `{pos, content}`: account data and its last change.
    account_data = 0x14,
    /// `user_id, stream pos(u64)` → `room_id or "", type`: latest change of each account-data
    /// entry (older entries are removed), for sync.
    account_data_log = 0x15,
    /// `user_id, filter_id` → filter JSON (the id is derived from the content).
    filters = 0x16,
    /// `session` → JSON user-interactive auth session.
    uia_sessions = 0x17,
    /// `user_id` → JSON presence record `{presence, status_msg, last_active_ts, pos}`.
    presence = 0x18,
    /// `token` → JSON registration token `{uses_allowed, completed, expiry_time}` (admin API).
    registration_tokens = 0x19,
    /// `user_id, room_id, thread root` → JSON `{state, pos, unsubscribed_at?}`: a user's
    /// thread subscription (MSC4306) and the position of its last change.
    thread_subscriptions = 0x1A,
    /// `user_id, stream pos(u64)` → JSON `{room, root}`: the latest change of each thread
    /// subscription (older entries are removed), for sync (MSC4308).
    thread_subscription_log = 0x1B,
    /// `nonce` → issue time (ms, u64): outstanding shared-secret registration nonces (in
    /// the database, so a nonce fetched from one process is accepted by another).
    registration_nonces = 0x1C,

    // ---- rooms and events ----
    /// `event_id` → JSON `{pos, pdu}`: the signed event and its stream position.
    pdus = 0x20,
    /// `pos(u64)` → `room_id`: the global timeline stream.
    stream = 0x21,
    /// `room_id, pos(u64)` → `event_id`: each room's timeline.
    room_timeline = 0x22,
    /// `room_id, type, state_key` → `event_id`: current state.
    room_state = 0x23,
    /// `room_id, type, state_key, pos(u64)` → `event_id`: every state change, for historical state.
    room_state_history = 0x24,
    /// `room_id` → JSON room record (version, creator, kind).
    rooms = 0x25,
    /// `user_id, room_id` → JSON `{membership, pos, event_id}`: each user's rooms.
    user_rooms = 0x26,
    /// `user_id, device_id, txn_id` → `event_id`: transaction idempotence.
    txns = 0x27,
    /// `alias` → `room_id`.
    aliases = 0x28,
    /// `room_id` → `""`: rooms in the public directory.
    public_rooms = 0x29,
    /// `user_id, room_id` → `""`: rooms the user forgot.
    forgotten = 0x2A,
    /// `room_id, alias` → `""`: the aliases pointing at a room.
    room_aliases = 0x2B,
    /// `event_id` → `device_id, txn_id`: which device sent a local event under which
    /// transaction id (for `unsigned.transaction_id`).
    event_txns = 0x2C,
    /// `room_id` → JSON `{user_id, ts}`: rooms an administrator blocked (joins refused).
    blocked_rooms = 0x2D,
    /// `report id(u64)` → JSON event report `{room_id, event_id, user_id, reason, score,
    /// received_ts}`.
    event_reports = 0x2E,
    /// `user_id, room_id` → `pos(u64)`: the user wiped the room's history for themselves
    /// up to and including this timeline position.
    history_wipes = 0x2F,

    // ---- relations and threads (0xA0-0xAF; keys built in `rooms/relation_index.rs`) ----
    /// `room_id, parent event_id, rel_type, pos(u64)` → `event_id`: every event with
    /// `content.m.relates_to.{event_id, rel_type}`, written with the event.
    relations = 0xA0,
    /// `room_id, root event_id` → JSON `{count, latest_pos, latest}`: a thread's replies
    /// and its newest one.
    thread_summaries = 0xA1,
    /// `room_id, root event_id, user_id` → `count(u64)`: each user's replies to a thread.
    thread_participants = 0xA2,
    /// `room_id, latest_pos(u64), root event_id` → `""`: threads by their newest reply.
    thread_activity = 0xA3,

    // ---- ephemeral ----
    /// `room_id, receipt_type, user_id, thread` → JSON `{event_id, ts, pos}`.
    receipts = 0x30,
    /// `room_id, pos(u64)` → `receipt_type, user_id, thread`: receipt change log for sync.
    receipts_log = 0x31,
    /// `room_id, user_id` → JSON `{until_ms, pos}`: who types where, written only when
    /// several processes share the database (each keeps typing in memory and learns of
    /// the others' changes from this tree); `until_ms` 0: stopped.
    typing = 0x32,

    // ---- end-to-end encryption (0x40-0x4F) ----
    /// `user_id, device_id` → device keys JSON as uploaded (without `unsigned`).
    device_keys = 0x40,
    /// `user_id, device_id, "algorithm:key_id"` → one-time key JSON (string or object).
    one_time_keys = 0x41,
    /// `user_id, device_id, algorithm` → JSON `{key_id, key, used}`.
    fallback_keys = 0x42,
    /// `user_id, "master" | "self_signing" | "user_signing"` → cross-signing key JSON.
    cross_signing_keys = 0x43,
    /// `target_user_id, key_id (device id or master public key), signer_user_id,
    /// signer_key_id` → JSON signature string: signatures uploaded for stored keys.
    key_signatures = 0x44,
    /// `pos(u64)` → `user_id`: the latest device-list change of each user (older entries
    /// are removed), scanned by `/sync` and `/keys/changes`.
    device_list_log = 0x45,
    /// `user_id` → `pos(u64)`: where the user's entry in `device_list_log` is.
    device_list_latest = 0x46,
    /// `user_id, device_id` → `pos(u64)`: last change of the device's one-time or fallback
    /// keys (so `/sync` reports new counts).
    key_count_changes = 0x47,
    /// `user_id, device_id, pos(u64)` → JSON `{sender, type, content}`: to-device inbox.
    to_device = 0x48,
    /// `sender user_id, sender device_id, txn_id` → `""`: `sendToDevice` idempotence.
    to_device_txns = 0x49,
    /// `user_id, version(u64)` → JSON backup version `{algorithm, auth_data, etag, count, deleted}`.
    backup_versions = 0x4A,
    /// `user_id, version(u64), room_id, session_id` → key backup data JSON.
    backup_keys = 0x4B,

    // ---- media (0x50-0x5F) ----
    /// `media_id` → JSON media record (content hash, type, name, size, uploader, pending).
    media = 0x50,
    /// `media_id, "WxH-method"` → JSON cached thumbnail `{sha256, content_type, size}`.
    media_thumbnails = 0x51,

    // ---- rtc ----
    /// `sha256(openid_token)` → JSON `{user_id, expires_ms}`: OpenID tokens for the SFU
    /// token service and `/_matrix/federation/v1/openid/userinfo`.
    openid_tokens = 0x60,
    /// `delay_id` → JSON delayed event (MSC4140): owner, room, type, state key, content,
    /// delay, running since, deadline.
    delayed_events = 0x61,
    /// `deadline_ms(u64), delay_id` → `""`: delayed events by the time they fire.
    delayed_by_deadline = 0x62,
    /// `user_id, delay_id` → `""`: each user's scheduled delayed events.
    delayed_by_user = 0x63,
    /// `room_id, type, state_key, delay_id` → `""`: scheduled delayed state events, to
    /// cancel them when another user writes that state.
    delayed_by_state = 0x64,
    /// `user_id, device_id, txn_id` → `delay_id`: idempotent scheduling by transaction.
    delayed_txns = 0x65,
    /// `user_id, room_id, slot_id, member_id` → JSON `{delay_id, generation}`: the current
    /// delegated delayed leave of a call membership (MSC4195), whichever process watches it.
    rtc_delegations = 0x66,

    // ---- push ----
    /// `user_id, room_id, pos(u64)` → JSON `{e, h, a, t}`: one record per notified user,
    /// as written before `event_push`; moved into `event_push` at start.
    push_actions = 0x70,
    /// Unused since push records are listed from `push_actions` (older data dirs may hold
    /// entries; nothing reads them).
    user_notifications = 0x71,
    /// `user_id, app_id, pushkey` → JSON pusher.
    pushers = 0x72,
    /// `room_id, pos(u64)` → JSON `{e: event_id, t: ts, g: [{a: actions, u: [user_id]}]}`:
    /// who a notifying event notifies, grouped by the actions that applied. One record per
    /// event; unread counts are the records after the user's receipt that name the user.
    event_push = 0x73,

    // ---- application services (0x80-0x8F) ----
    /// `appservice_id` → JSON `{next_txn, acked_through, pending: {txn_id, end, body}}`:
    /// the delivery state of one appservice; `pending` is the transaction sent and not yet
    /// acknowledged, re-sent as it is (same id, same body) after a restart.
    appservice_delivery = 0x80,
    /// `appservice_id, e2ee pos(u64), user_id, device_id` → JSON `{sender, type, content,
    /// to_user_id, to_device_id}`: to-device messages for the users of an encrypted
    /// appservice (MSC3202), kept until a transaction holding them is acknowledged.
    appservice_to_device = 0x81,
    /// `appservice_id, user_id, device_id` → `pos(u64)`: devices of an encrypted
    /// appservice's users whose key counts changed (at that e2ee position) and were not
    /// yet sent in an acknowledged transaction.
    appservice_key_counts = 0x82,
    /// `appservice_id` → JSON `{next_txn, e2ee_through, timeline_through, pending}`: the
    /// encryption transactions of one appservice (MSC3202); `pending` is the one sent and
    /// not yet acknowledged, re-sent as it is after a restart.
    appservice_e2ee = 0x83,

    // ---- meetings (0x90-0x9F) ----
    /// `token` → JSON `{room_id, created_by, created_ts}`: a room's current join link.
    join_links = 0x90,
    /// `room_id` → `token`: the current join link of each room.
    room_join_links = 0x91,
    /// `room_id, user_id` → JSON `{since_ms, in_call, guest}`: temporary participants
    /// (joined by link), watched until the server removes them.
    temporary_participants = 0x92,
    /// `user_id, room_id` → `""`: the rooms each user is a temporary participant of.
    temporary_by_user = 0x93,
    /// `user_id` → `room_id`: each user's personal meeting room.
    personal_rooms = 0x94,
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_tree_has_its_own_prefix() {
        let mut prefixes: Vec<u8> = super::Trees::all().iter().map(|(_, p)| *p).collect();
        let count = prefixes.len();
        prefixes.sort_unstable();
        prefixes.dedup();
        assert_eq!(prefixes.len(), count, "two trees share a prefix byte");
    }
}
