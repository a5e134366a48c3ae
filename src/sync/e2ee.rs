//! The device-key part of a sync response, built once for `/sync` and the sliding sync
//! `e2ee` extension: device-list changes between two stream points, and the syncing
//! device's one-time key counts and unused fallback key types.

use std::collections::BTreeMap;

use ruma::{DeviceId, UserId};
use serde_json::{json, Map, Value};

use super::SyncService;
use crate::{
    e2ee::{DeviceListChanges, StreamPoint},
    Result,
};

/// Device-list changes and key counts of one syncing device.
pub(super) struct DeviceKeys {
    /// Whether any of it is news since the previous point.
    pub(super) changed: bool,
    device_lists: DeviceListChanges,
    one_time_key_counts: BTreeMap<String, u64>,
    unused_fallback_key_types: Vec<String>,
}

impl DeviceKeys {
    /// The response fields: `device_lists`, `device_one_time_keys_count` and
    /// `device_unused_fallback_key_types` (for `/sync` also under its MSC2732 name).
    pub(super) fn fields(&self, with_msc2732: bool) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert(
            "device_lists".into(),
            json!({ "changed": self.device_lists.changed, "left": self.device_lists.left }),
        );
        out.insert(
            "device_one_time_keys_count".into(),
            json!(self.one_time_key_counts),
        );
        out.insert(
            "device_unused_fallback_key_types".into(),
            json!(self.unused_fallback_key_types),
        );
        if with_msc2732 {
            out.insert(
                "org.matrix.msc2732.device_unused_fallback_key_types".into(),
                json!(self.unused_fallback_key_types),
            );
        }
        out
    }
}

impl SyncService {
    /// The device keys part of a response: device-list changes from `from` to `to` (none
    /// on an initial sync, `between` = `None`) and the device's key counts, changed when
    /// they moved after `from`.
    pub(super) fn device_keys(
        &self,
        user: &UserId,
        device: &DeviceId,
        between: Option<(StreamPoint, StreamPoint)>,
    ) -> Result<DeviceKeys> {
        let counts = self.e2ee.key_counts(user, device)?;
        let (device_lists, counts_changed) = match between {
            Some((from, to)) => (
                self.e2ee.device_list_changes(user, from, to)?,
                counts.changed_at > from.e2ee,
            ),
            None => (DeviceListChanges::default(), false),
        };
        Ok(DeviceKeys {
            changed: !device_lists.is_empty() || counts_changed,
            device_lists,
            one_time_key_counts: counts.one_time,
            unused_fallback_key_types: counts.unused_fallback,
        })
    }
}
