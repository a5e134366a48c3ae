//! Ephemeral events for the appservices that ask for them (MSC2409, `receive_ephemeral`):
//! typing notifications and receipts of the rooms an appservice follows, and the presence
//! of the users joined to one of those rooms, sent as their own
//! transactions (`ephemeral` and `de.sorunome.msc2409.ephemeral`, no timeline events) by
//! one task per appservice that follows the ephemeral stream.
//!
//! Ephemeral data is best effort, as in other homeservers: a transaction is tried a few
//! times and then dropped, the position is kept in memory (after a restart the stream
//! continues from the current positions).

use std::{sync::Arc, time::Duration};

use myelin_appservice::Registration;
use serde_json::{json, Value};

use super::AppserviceService;
use crate::Result;

/// How often a task looks for new ephemeral data.
const TICK: Duration = Duration::from_millis(200);
/// Attempts per ephemeral transaction before it is dropped.
const ATTEMPTS: u32 = 4;

impl AppserviceService {
    /// Starts one ephemeral task per appservice with a URL and `receive_ephemeral`.
    pub fn start_ephemeral(self: &Arc<Self>) {
        for reg in self.registrations() {
            if reg.url.is_none() || !reg.receive_ephemeral {
                continue;
            }
            let (service, reg) = (Arc::downgrade(self), reg.clone());
            tokio::spawn(async move {
                let Some(start) = service.upgrade().map(|s| {
                    (
                        s.rooms.current_ephemeral_pos(),
                        s.users.current_userdata_pos(),
                    )
                }) else {
                    return;
                };
                let mut since = start;
                let mut next_txn = 0u64;
                let boot = crate::users::now_ms();
                loop {
                    tokio::time::sleep(TICK).await;
                    let Some(service) = service.upgrade() else {
                        return;
                    };
                    let now = (
                        service.rooms.current_ephemeral_pos(),
                        service.users.current_userdata_pos(),
                    );
                    if now == since {
                        continue;
                    }
                    let events = match service.ephemeral_events(&reg, since) {
                        Ok(events) => events,
                        Err(e) => {
                            tracing::warn!(appservice = %reg.id, error = %e, "ephemeral events");
                            continue;
                        }
                    };
                    since = now;
                    if events.is_empty() {
                        continue;
                    }
                    let txn_id = format!("ephemeral-{boot}-{next_txn}");
                    next_txn += 1;
                    service.send_ephemeral(&reg, &txn_id, events).await;
                }
            });
        }
    }

    /// The typing and receipt events after ephemeral position `since.0` in the rooms `reg`
    /// follows, and the presence changes after user-data position `since.1` of the users
    /// joined to one of them.
    fn ephemeral_events(&self, reg: &Registration, since: (u64, u64)) -> Result<Vec<Value>> {
        let viewer = ruma::UserId::parse(reg.sender(&self.server_name))
            .map_err(|e| crate::Error::internal(format!("appservice sender: {e}")))?;
        let (since, since_userdata) = since;
        let mut events = Vec::new();
        for room in self.rooms.ephemeral_rooms_since(since) {
            if !self.is_interested_in_room(reg, &room)? {
                continue;
            }
            if let Some(typing) = self.rooms.typing_since(&room, since) {
                events.push(json!({
                    "type": "m.typing",
                    "room_id": room,
                    "content": { "user_ids": typing },
                }));
            }
            if let Some(content) = self.rooms.receipts_since(&room, since, &viewer)? {
                events.push(json!({
                    "type": "m.receipt",
                    "room_id": room,
                    "content": content,
                }));
            }
        }
        let mut present = Vec::new();
        for user in self.users.presence_changed_since(since_userdata) {
            let mut follows = false;
            for &(ref room, membership, _) in self.rooms.user_rooms(&user)?.iter() {
                if membership == crate::rooms::Membership::Join
                    && self.is_interested_in_room(reg, room)?
                {
                    follows = true;
                    break;
                }
            }
            if follows && !present.contains(&user) {
                present.push(user);
            }
        }
        events.extend(self.users.presence_since(&present, since_userdata)?);
        Ok(events)
    }

    /// `PUT {url}/_matrix/app/v1/transactions/{txnId}` with the events under both the
    /// stable and the unstable key; a few attempts, then dropped.
    async fn send_ephemeral(&self, reg: &Registration, txn_id: &str, events: Vec<Value>) {
        let Some(url) = &reg.url else {
            return;
        };
        let body = json!({
            "events": [],
            "ephemeral": events,
            "de.sorunome.msc2409.ephemeral": events,
        });
        let target = format!("{url}/_matrix/app/v1/transactions/{txn_id}");
        let mut pause = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            let sent = self
                .http
                .put(&target)
                .bearer_auth(&reg.hs_token)
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => return,
                Ok(resp) => tracing::debug!(
                    appservice = %reg.id, txn_id, status = %resp.status(), attempt,
                    "appservice refused an ephemeral transaction"
                ),
                Err(e) => tracing::debug!(
                    appservice = %reg.id, txn_id, error = %e.without_url(), attempt,
                    "appservice unreachable for an ephemeral transaction"
                ),
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        tracing::warn!(appservice = %reg.id, txn_id, "ephemeral transaction dropped");
    }
}
