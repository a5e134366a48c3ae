//! Encrypted appservices (MSC3202, registration flag `org.matrix.msc3202: true`): the
//! to-device messages for the users the appservice owns exclusively (its own user and its
//! exclusive user namespaces), the device-list changes of the users it is interested in,
//! and the one-time-key counts and unused fallback key types of its users' devices, in
//! transactions of their own (ids `e2ee-N`), one task per appservice.
//!
//! Reliable like the timeline transactions: to-device messages wait in the
//! `appservice_to_device` tree (written with the message, instead of the device inbox),
//! and devices whose key counts changed in `appservice_key_counts`. A transaction is
//! recorded durably as `pending` (id, body, what it carries) before it leaves and sent
//! until the appservice answers 2xx (after a restart the same id and body go again); only
//! then, in one durable batch, are its to-device messages removed and its positions
//! recorded. A count marker is removed only if no newer change replaced it.
//!
//! Device lists follow MSC3202's interest rule: `changed` holds the users whose devices
//! or keys changed and who are the appservice's users or share a joined room with them
//! (or with a room in its namespaces), and users who newly share such a room; `left` holds
//! users who left or were banned from one and now share none.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use myelin_appservice::{DeviceLists, Registration, Transaction};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    delivery::{FIRST_BACKOFF, MAX_BACKOFF},
    AppserviceService,
};
use crate::{
    rooms::Membership,
    storage::{keys as skeys, Batch},
    Error, Result,
};

/// How often a task looks for new encryption data.
const TICK: Duration = Duration::from_millis(100);
/// To-device messages in one transaction, at most.
pub const MAX_TO_DEVICE: usize = 100;
/// Devices whose key counts one transaction carries, at most.
const MAX_KEY_COUNTS: usize = 500;
/// Timeline events looked at for membership changes per transaction, at most.
const MEMBER_SCAN: usize = 1_000;

/// The stored encryption-transaction state of one appservice.
#[derive(Default, Serialize, Deserialize)]
struct E2eeState {
    /// The number of the next new transaction.
    next_txn: u64,
    /// Device-list changes up to this e2ee position were sent and acknowledged.
    e2ee_through: u64,
    /// Membership changes up to this timeline position were sent and acknowledged.
    timeline_through: u64,
    /// The transaction sent and not acknowledged yet.
    pending: Option<Pending>,
}

/// A transaction waiting for its acknowledgement, with what it carries.
#[derive(Clone, Serialize, Deserialize)]
struct Pending {
    txn_id: String,
    body: Value,
    /// `(e2ee pos, user, device)` of its to-device messages.
    to_device: Vec<(u64, String, String)>,
    /// `(user, device, marker pos)` of the devices whose counts it carries (or that no
    /// longer exist).
    key_counts: Vec<(String, String, u64)>,
    /// The positions its device lists go up to.
    e2ee_to: u64,
    timeline_to: u64,
}

/// A transaction to send: its id and body.
#[derive(Clone, Debug, PartialEq)]
pub struct E2eeTransaction {
    /// `e2ee-N`.
    pub txn_id: String,
    /// The JSON body.
    pub body: Value,
}

impl AppserviceService {
    /// Starts one encryption task per appservice with a URL and `org.matrix.msc3202`.
    pub fn start_e2ee(self: &Arc<Self>) {
        for reg in self.registrations() {
            if reg.url.is_none() || !reg.msc3202 {
                continue;
            }
            // Device lists start here, before any request is served, when new.
            if let Err(e) = self.init_e2ee(reg) {
                tracing::warn!(appservice = %reg.id, error = %e, "encryption transactions");
            }
            let (service, reg) = (Arc::downgrade(self), reg.clone());
            tokio::spawn(async move {
                // Positions last seen with nothing left to send (none: look at once, a
                // transaction may be waiting from before a restart).
                let mut idle_at = None;
                loop {
                    tokio::time::sleep(TICK).await;
                    let Some(s) = service.upgrade() else {
                        return;
                    };
                    let now = (s.e2ee.current_pos(), s.rooms.current_pos());
                    if idle_at == Some(now) {
                        continue;
                    }
                    let txn = match s.next_e2ee_transaction(&reg).await {
                        Ok(Some(txn)) => txn,
                        Ok(None) => {
                            idle_at = Some(now);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(appservice = %reg.id, error = %e, "encryption transaction");
                            continue;
                        }
                    };
                    drop(s);
                    let mut pause = FIRST_BACKOFF;
                    loop {
                        let Some(s) = service.upgrade() else {
                            return;
                        };
                        if s.put_transaction(&reg, &txn.txn_id, &txn.body, pause).await {
                            if let Err(e) = s.acknowledge_e2ee(&reg, &txn.txn_id).await {
                                tracing::warn!(appservice = %reg.id, error = %e, "encryption acknowledgement");
                            }
                            break;
                        }
                        drop(s);
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(MAX_BACKOFF);
                    }
                }
            });
        }
    }

    /// One attempt at `PUT {url}/_matrix/app/v1/transactions/{txn_id}`: whether the
    /// appservice acknowledged it (2xx). `retry_in` is only logged.
    async fn put_transaction(
        &self,
        reg: &Registration,
        txn_id: &str,
        body: &Value,
        retry_in: Duration,
    ) -> bool {
        let Some(url) = &reg.url else {
            return false;
        };
        let sent = self
            .http
            .put(format!("{url}/_matrix/app/v1/transactions/{txn_id}"))
            .bearer_auth(&reg.hs_token)
            .json(body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => true,
            Ok(resp) => {
                tracing::warn!(
                    appservice = %reg.id, txn_id, status = %resp.status(),
                    retry_in_ms = retry_in.as_millis() as u64, "appservice refused a transaction"
                );
                false
            }
            Err(e) => {
                tracing::warn!(
                    appservice = %reg.id, txn_id, error = %e.without_url(),
                    retry_in_ms = retry_in.as_millis() as u64, "appservice unreachable"
                );
                false
            }
        }
    }

    /// Records the starting positions of a new appservice's device lists: now.
    fn init_e2ee(&self, reg: &Registration) -> Result<()> {
        if self.load_e2ee(reg)?.is_some() {
            return Ok(());
        }
        let mut batch = Batch::new();
        self.put_e2ee(reg, &self.fresh_e2ee(), &mut batch)?;
        self.storage.commit(batch)
    }

    fn fresh_e2ee(&self) -> E2eeState {
        E2eeState {
            e2ee_through: self.e2ee.current_pos(),
            timeline_through: self.rooms.current_pos(),
            ..E2eeState::default()
        }
    }

    fn load_e2ee(&self, reg: &Registration) -> Result<Option<E2eeState>> {
        self.storage
            .trees
            .appservice_e2ee
            .get_json(reg.id.as_bytes())
    }

    fn put_e2ee(&self, reg: &Registration, state: &E2eeState, batch: &mut Batch) -> Result<()> {
        batch.insert_json(
            &self.storage.trees.appservice_e2ee,
            reg.id.as_bytes(),
            state,
        )
    }

    /// The encryption transaction to send next: the pending one when there is one (same id
    /// and body), else a new one, recorded durably as pending before it is returned; `None`
    /// when there is nothing to send. Without a stored state (the task records one at
    /// start) the device lists start at the current positions.
    pub async fn next_e2ee_transaction(
        &self,
        reg: &Registration,
    ) -> Result<Option<E2eeTransaction>> {
        let mut state = match self.load_e2ee(reg)? {
            Some(state) => state,
            None => self.fresh_e2ee(),
        };
        if let Some(p) = &state.pending {
            return Ok(Some(E2eeTransaction {
                txn_id: p.txn_id.clone(),
                body: p.body.clone(),
            }));
        }
        let (txn, mut pending) = loop {
            let built = self.build_e2ee(reg, &state)?;
            if let Some(found) = built.transaction {
                break found;
            }
            // Nothing to say: move on (a loss here only means looking again), and forget
            // markers of deleted devices; with some forgotten, more may be waiting.
            state.e2ee_through = built.e2ee_to;
            state.timeline_through = built.timeline_to;
            let mut batch = Batch::new();
            self.put_e2ee(reg, &state, &mut batch)?;
            self.storage.commit(batch)?;
            if built.stale_markers.is_empty() {
                return Ok(None);
            }
            self.drop_key_count_markers(reg, &built.stale_markers)?;
        };
        let mut batch = Batch::new();
        let txn_id = format!("e2ee-{}", state.next_txn);
        pending.txn_id = txn_id.clone();
        pending.body = serde_json::to_value(&txn)?;
        state.next_txn += 1;
        let out = E2eeTransaction {
            txn_id,
            body: pending.body.clone(),
        };
        state.pending = Some(pending);
        // Durable before it leaves: a restart sends it again with the same id.
        self.put_e2ee(reg, &state, &mut batch)?;
        self.storage.commit_durable(batch).await?;
        Ok(Some(out))
    }

    /// Records that the appservice acknowledged `txn_id`: its to-device messages are
    /// removed and its positions recorded in one durable batch, then the count markers it
    /// covered are removed unless a newer change replaced them. Acknowledging anything but
    /// the pending transaction changes nothing.
    pub async fn acknowledge_e2ee(&self, reg: &Registration, txn_id: &str) -> Result<()> {
        let Some(mut state) = self.load_e2ee(reg)? else {
            return Ok(());
        };
        let Some(p) = state.pending.take_if(|p| p.txn_id == txn_id) else {
            return Ok(());
        };
        let trees = &self.storage.trees;
        let mut batch = Batch::new();
        for (pos, user, device) in &p.to_device {
            let key = skeys::KeyBuilder::new()
                .str(&reg.id)
                .u64(*pos)
                .str(user)
                .str(device)
                .build();
            batch.remove(&trees.appservice_to_device, &key);
        }
        state.e2ee_through = state.e2ee_through.max(p.e2ee_to);
        state.timeline_through = state.timeline_through.max(p.timeline_to);
        self.put_e2ee(reg, &state, &mut batch)?;
        self.storage.commit_durable(batch).await?;
        self.drop_key_count_markers(reg, &p.key_counts)
    }

    /// Removes the count markers still at the positions seen.
    fn drop_key_count_markers(
        &self,
        reg: &Registration,
        markers: &[(String, String, u64)],
    ) -> Result<()> {
        let tree = &self.storage.trees.appservice_key_counts;
        for (user, device, pos) in markers {
            let key = skeys::strs(&[reg.id.as_str(), user, device]);
            tree.compare_and_swap(&key, Some(&pos.to_be_bytes()), None)?;
        }
        Ok(())
    }

    /// What a new transaction would carry after `state`'s positions.
    fn build_e2ee(&self, reg: &Registration, state: &E2eeState) -> Result<Built> {
        let trees = &self.storage.trees;
        let prefix = skeys::strs(&[reg.id.as_str()]);
        let mut txn = Transaction::default();
        let mut pending = Pending {
            txn_id: String::new(),
            body: Value::Null,
            to_device: Vec::new(),
            key_counts: Vec::new(),
            e2ee_to: 0,
            timeline_to: 0,
        };

        for kv in trees
            .appservice_to_device
            .scan_prefix(&prefix)
            .take(MAX_TO_DEVICE)
        {
            let (k, v) = kv?;
            let rest = &k[prefix.len()..];
            let pos = skeys::leading_u64(rest)
                .ok_or_else(|| Error::internal("appservice to-device key without position"))?;
            let parts = skeys::split_strs(&rest[8..]);
            let &[user, device] = parts.as_slice() else {
                return Err(Error::internal("appservice to-device key without device"));
            };
            pending
                .to_device
                .push((pos, user.to_owned(), device.to_owned()));
            txn.to_device.push(serde_json::from_slice(&v)?);
        }

        let mut stale_markers = Vec::new();
        for kv in trees
            .appservice_key_counts
            .scan_prefix(&prefix)
            .take(MAX_KEY_COUNTS)
        {
            let (k, v) = kv?;
            let parts = skeys::split_strs(&k[prefix.len()..]);
            let &[user, device] = parts.as_slice() else {
                return Err(Error::internal("appservice key-count key without device"));
            };
            let pos = skeys::leading_u64(&v).unwrap_or(0);
            let marker = (user.to_owned(), device.to_owned(), pos);
            let user_id =
                UserId::parse(user).map_err(|e| Error::internal(format!("stored user id: {e}")))?;
            let device_id = ruma::OwnedDeviceId::from(device);
            if self.users.device(&user_id, &device_id)?.is_none() {
                stale_markers.push(marker);
                continue;
            }
            let counts = self.e2ee.key_counts(&user_id, &device_id)?;
            txn.device_one_time_keys_count
                .entry(user.to_owned())
                .or_default()
                .insert(device.to_owned(), counts.one_time);
            txn.device_unused_fallback_key_types
                .entry(user.to_owned())
                .or_default()
                .insert(device.to_owned(), counts.unused_fallback);
            pending.key_counts.push(marker);
        }

        let e2ee_to = self.e2ee.current_pos();
        let timeline_now = self.rooms.current_pos();
        let members =
            self.rooms
                .appended_between(state.timeline_through, timeline_now, MEMBER_SCAN)?;
        let timeline_to = if members.len() == MEMBER_SCAN {
            members.last().map_or(timeline_now, |(pos, _)| *pos)
        } else {
            timeline_now
        };
        txn.device_lists = self.device_lists(
            reg,
            self.e2ee
                .device_lists_changed_between(state.e2ee_through, e2ee_to)?,
            members.iter().map(|(_, pdu)| pdu.as_ref()),
        )?;
        pending.e2ee_to = e2ee_to;
        pending.timeline_to = timeline_to;

        let empty = txn.to_device.is_empty()
            && txn.device_one_time_keys_count.is_empty()
            && txn.device_lists.is_empty();
        if empty {
            return Ok(Built {
                transaction: None,
                e2ee_to,
                timeline_to,
                stale_markers,
            });
        }
        // Markers of deleted devices go with the transaction.
        pending.key_counts.extend(stale_markers);
        Ok(Built {
            transaction: Some((txn, pending)),
            e2ee_to,
            timeline_to,
            stale_markers: Vec::new(),
        })
    }

    /// `changed` and `left` for the appservice from the users whose device lists changed
    /// and the timeline events appended meanwhile (member events are looked at).
    fn device_lists<'a>(
        &self,
        reg: &Registration,
        keys_changed: Vec<OwnedUserId>,
        appended: impl Iterator<Item = &'a crate::events::Pdu>,
    ) -> Result<DeviceLists> {
        let owns = |u: &UserId| reg.owns_user(u.as_str(), &self.server_name);
        let mut follows: HashMap<OwnedRoomId, bool> = HashMap::new();
        let mut changed: BTreeSet<OwnedUserId> = keys_changed.into_iter().collect();
        let mut gone: BTreeSet<OwnedUserId> = BTreeSet::new();
        for pdu in appended {
            if pdu.kind != ruma::events::TimelineEventType::RoomMember {
                continue;
            }
            let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()) else {
                continue;
            };
            let membership = Membership::from_content(&pdu.content_value());
            let set = match membership {
                Membership::Join => &mut changed,
                Membership::Leave | Membership::Ban => &mut gone,
                Membership::Invite | Membership::Knock => continue,
            };
            if owns(&target) {
                // One of its users came or went: everybody in the room may be new or gone.
                set.extend(
                    self.rooms
                        .members(&pdu.room_id)?
                        .joined()
                        .map(ToOwned::to_owned),
                );
            } else if !self.follows_cached(reg, &pdu.room_id, &mut follows)? {
                // Comings and goings in rooms it does not follow are none of its business.
                continue;
            }
            set.insert(target);
        }
        if changed.is_empty() && gone.is_empty() {
            return Ok(DeviceLists::default());
        }
        let mut shares = |user: &UserId| -> Result<bool> {
            if owns(user) {
                return Ok(true);
            }
            for room in self.rooms.joined_rooms(user)? {
                if self.follows_cached(reg, &room, &mut follows)? {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        let mut out = DeviceLists::default();
        for user in &changed {
            if shares(user)? {
                out.changed.push(user.to_string());
            }
        }
        for user in &gone {
            if !shares(user)? {
                out.left.push(user.to_string());
            }
        }
        Ok(out)
    }

    fn follows_cached(
        &self,
        reg: &Registration,
        room: &RoomId,
        cache: &mut HashMap<OwnedRoomId, bool>,
    ) -> Result<bool> {
        if let Some(known) = cache.get(room) {
            return Ok(*known);
        }
        let follows = self.is_interested_in_room(reg, room)?;
        cache.insert(room.to_owned(), follows);
        Ok(follows)
    }
}

/// What [`AppserviceService::build_e2ee`] found.
struct Built {
    /// The transaction and what it carries, unless there is nothing to send.
    transaction: Option<(Transaction, Pending)>,
    e2ee_to: u64,
    timeline_to: u64,
    /// Count markers of deleted devices, when there is no transaction to take them.
    stale_markers: Vec<(String, String, u64)>,
}

#[cfg(test)]
mod tests;
