//! Media retention: deleting local media created before a time, by the admin API
//! (`POST /_synapse/admin/v1/media/delete?before_ts=`) or periodically when
//! `media.retention_days` is set. A record goes with its thumbnails; a content file goes
//! once no remaining record or thumbnail names it (uploads share files by content hash).

use std::{collections::HashSet, time::Duration};

use super::{MediaRecord, MediaService, ThumbRecord};
use crate::{
    storage::{keys, Batch},
    Result,
};

/// How often the retention task looks for expired media.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// Content files written this recently are kept even when unreferenced: an upload of the
/// same content may be between writing its file and recording it.
const FRESH_FILE: Duration = Duration::from_secs(10);

impl MediaService {
    /// Deletes the media created before `before_ms` (ms since the epoch) and larger than
    /// `size_gt` bytes, with their thumbnails and the content files no longer used;
    /// returns the deleted media ids.
    pub async fn delete_before(&self, before_ms: u64, size_gt: u64) -> Result<Vec<String>> {
        let trees = &self.storage.trees;
        let mut deleted = Vec::new();
        let mut freed = HashSet::new();
        let mut kept = HashSet::new();
        let mut batch = Batch::new();
        for pair in trees.media.scan_prefix(&[]) {
            let (key, value) = pair?;
            let Ok(record) = serde_json::from_slice::<MediaRecord>(&value) else {
                continue;
            };
            let Some(media_id) = keys::split_strs(&key).first().map(|id| id.to_string()) else {
                continue;
            };
            if record.created < before_ms && record.size > size_gt {
                batch.remove(&trees.media, &key);
                for thumb in trees.media_thumbnails.scan_prefix(&key) {
                    let (thumb_key, thumb) = thumb?;
                    if let Ok(t) = serde_json::from_slice::<ThumbRecord>(&thumb) {
                        freed.insert(t.sha256);
                    }
                    batch.remove(&trees.media_thumbnails, &thumb_key);
                }
                freed.insert(record.sha256);
                deleted.push(media_id);
            } else {
                kept.insert(record.sha256);
                for thumb in trees.media_thumbnails.scan_prefix(&key) {
                    if let Ok(t) = serde_json::from_slice::<ThumbRecord>(&thumb?.1) {
                        kept.insert(t.sha256);
                    }
                }
            }
        }
        self.storage.commit_durable(batch).await?;
        let fresh_after = std::time::SystemTime::now() - FRESH_FILE;
        for sha in freed.difference(&kept) {
            if sha.len() < 2 {
                continue; // a created, never uploaded media id has no file
            }
            let path = self.blob_path(sha);
            let fresh = tokio::fs::metadata(&path)
                .await
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified > fresh_after);
            if !fresh {
                if let Err(e) = tokio::fs::remove_file(&path).await {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %path.display(), error = %e, "media file not removed");
                    }
                }
            }
        }
        if !deleted.is_empty() {
            tracing::info!(count = deleted.len(), before_ms, "media deleted");
        }
        Ok(deleted)
    }

    /// Starts the periodic purge of media older than `media.retention_days` (nothing when
    /// it is 0, the default); call once inside the runtime.
    pub fn start_retention(self: &std::sync::Arc<Self>) {
        let days = self.config.media.retention_days;
        if days == 0 {
            return;
        }
        let media = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RETENTION_INTERVAL);
            loop {
                tick.tick().await;
                let Some(media) = media.upgrade() else {
                    return;
                };
                let before = super::now_ms().saturating_sub(days * 24 * 3600 * 1000);
                if let Err(e) = media.delete_before(before, 0).await {
                    tracing::error!(error = %e, "media retention failed");
                }
            }
        });
    }
}
