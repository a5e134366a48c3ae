//! Pushers (per user, app id and push key) and the delivery of recorded events to their
//! push gateways.

use std::{collections::HashSet, sync::Arc};

use ruma::{
    api::client::push::{Pusher, PusherKind},
    OwnedUserId, UserId,
};

use super::{evaluate::Evaluated, gateway, PushService};
use crate::{
    storage::{keys, Batch},
    Result,
};

/// Users who have (or recently had) a pusher.
#[derive(Default)]
pub(super) struct WithPushers {
    /// The users; only grows while running.
    pub(super) users: HashSet<OwnedUserId>,
    /// Pushers may be missing (other processes' went unannounced): read them again
    /// before the next look.
    pub(super) stale: bool,
}

impl PushService {
    /// Reads who has pushers (call once at start; read again when other processes'
    /// pushers may have been missed).
    pub fn load_pushers(&self) -> Result<()> {
        let mut users = HashSet::new();
        for kv in self.storage.trees.pushers.scan_prefix(&[]) {
            let (k, _) = kv?;
            if let Some(user) = keys::split_strs(&k)
                .first()
                .and_then(|u| OwnedUserId::try_from(*u).ok())
            {
                users.insert(user);
            }
        }
        self.with_pushers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .users
            .extend(users);
        Ok(())
    }

    pub(super) fn may_have_pushers(&self, user: &UserId) -> bool {
        let stale = std::mem::take(
            &mut self
                .with_pushers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .stale,
        );
        if stale {
            if let Err(e) = self.load_pushers() {
                tracing::error!(error = %e, "reading who has pushers again");
                self.with_pushers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .stale = true;
                return true;
            }
        }
        self.with_pushers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .users
            .contains(user)
    }

    /// Queues the pushes of recorded (and durable) events to the users' push gateways.
    pub(super) fn deliver(&self, e: &Evaluated) -> Result<()> {
        let room_id = &e.pdu.room_id;
        for (user, _) in &e.pushes {
            if !self.may_have_pushers(user) {
                continue;
            }
            let pushers = self.pushers(user)?;
            if pushers.is_empty() {
                continue;
            }
            // The user's own view of the event's record, for the push payload.
            let Some(record) = e.record.for_user(user) else {
                continue;
            };
            let unread = self.total_unread(user)?;
            let room_name = self
                .rooms
                .state_content(room_id, "m.room.name", "")?
                .and_then(|c| c["name"].as_str().map(str::to_owned));
            let sender_name = self.display_name(room_id, &e.pdu.sender).ok();
            for pusher in pushers {
                self.gateway.queue(gateway::Job::new(
                    user,
                    pusher,
                    &e.event_json,
                    &record,
                    unread,
                    room_name.as_deref(),
                    sender_name.as_deref(),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn pusher_key(user: &UserId, app_id: &str, pushkey: &str) -> Vec<u8> {
        keys::strs(&[user.as_str(), app_id, pushkey])
    }

    /// A user's pushers.
    pub fn pushers(&self, user: &UserId) -> Result<Vec<Pusher>> {
        let mut out = Vec::new();
        for kv in self
            .storage
            .trees
            .pushers
            .scan_prefix(&keys::strs(&[user.as_str()]))
        {
            let (_, v) = kv?;
            if let Ok(p) = serde_json::from_slice::<Pusher>(&v) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Creates or replaces a pusher. Unless `append`, pushers of other users with the same
    /// app id and push key are removed (the spec's rule). Durable when this returns.
    pub async fn set_pusher(&self, user: &UserId, pusher: Pusher, append: bool) -> Result<()> {
        if let PusherKind::Http(http) = &pusher.kind {
            self.gateway.check_url(&http.url)?;
        }
        let app_id = pusher.ids.app_id.clone();
        let pushkey = pusher.ids.pushkey.clone();
        let mut batch = Batch::new();
        if !append {
            for kv in self.storage.trees.pushers.scan_prefix(&[]) {
                let (k, v) = kv?;
                if let Ok(p) = serde_json::from_slice::<Pusher>(&v) {
                    if p.ids.app_id == app_id && p.ids.pushkey == pushkey {
                        batch.remove(&self.storage.trees.pushers, &k);
                    }
                }
            }
        }
        batch.insert_json(
            &self.storage.trees.pushers,
            &Self::pusher_key(user, &app_id, &pushkey),
            &pusher,
        )?;
        // Known before the pusher is visible, so no event between misses it.
        self.with_pushers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .users
            .insert(user.to_owned());
        self.storage.commit(batch)?;
        self.storage.durable().await
    }

    /// Deletes a pusher (no error when absent). Durable when this returns.
    pub async fn delete_pusher(&self, user: &UserId, app_id: &str, pushkey: &str) -> Result<()> {
        let mut batch = Batch::new();
        batch.remove(
            &self.storage.trees.pushers,
            &Self::pusher_key(user, app_id, pushkey),
        );
        self.storage.commit(batch)?;
        self.storage.durable().await
    }

    /// Removes every pusher of a user (deactivation).
    pub fn delete_all_pushers(&self, user: &UserId) -> Result<()> {
        let mut batch = Batch::new();
        for kv in self
            .storage
            .trees
            .pushers
            .scan_prefix(&keys::strs(&[user.as_str()]))
        {
            batch.remove(&self.storage.trees.pushers, &kv?.0);
        }
        self.storage.commit(batch)
    }

    /// Starts delivering queued pushes (call once from inside the runtime).
    pub fn start_delivery(self: &Arc<Self>) {
        // Weak: the delivery task must not keep the service (and the database) alive.
        let this = Arc::downgrade(self);
        self.gateway
            .start(move |user: &str, app_id: &str, pushkey: &str| {
                let Some(this) = this.upgrade() else {
                    return;
                };
                if let Ok(user) = <&UserId>::try_from(user) {
                    let mut batch = Batch::new();
                    batch.remove(
                        &this.storage.trees.pushers,
                        &Self::pusher_key(user, app_id, pushkey),
                    );
                    if let Err(e) = this.storage.commit(batch) {
                        tracing::warn!(error = %e, "could not remove rejected pusher");
                    }
                }
            });
    }
}
