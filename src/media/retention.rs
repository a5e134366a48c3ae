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

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use futures_util::Stream;
    use ruma::UserId;
    use sha2::Digest;

    use super::*;
    use crate::{config::Config, storage::Storage};

    fn body(
        data: &'static [u8],
    ) -> impl Stream<Item = std::result::Result<bytes::Bytes, std::io::Error>> + Unpin {
        futures_util::stream::iter(vec![Ok(bytes::Bytes::from_static(data))])
    }

    /// Makes every content file look an hour old (past the fresh-file grace).
    fn age_files(root: &Path) {
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        for dir in std::fs::read_dir(root).unwrap() {
            let dir = dir.unwrap().path();
            if dir.ends_with("tmp") || !dir.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&dir).unwrap() {
                let file = std::fs::File::options()
                    .write(true)
                    .open(file.unwrap().path())
                    .unwrap();
                file.set_modified(old).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn deletes_old_records_and_only_unshared_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        let media = MediaService::new(Arc::new(config), Arc::new(Storage::in_memory())).unwrap();
        let alice = <&UserId>::try_from("@alice:localhost").unwrap();
        let id = |uri: String| uri.rsplit('/').next().unwrap().to_owned();
        let shared_old = id(media
            .upload(alice, None, None, body(b"shared"))
            .await
            .unwrap());
        let alone = id(media
            .upload(alice, None, None, body(b"alone"))
            .await
            .unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        let cutoff = super::super::now_ms();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let shared_new = id(media
            .upload(alice, None, None, body(b"shared"))
            .await
            .unwrap());
        let shared_file = media.blob_path(&hex::encode(sha2::Sha256::digest(b"shared")));
        let alone_file = media.blob_path(&hex::encode(sha2::Sha256::digest(b"alone")));
        age_files(media.root());

        let mut deleted = media.delete_before(cutoff, 0).await.unwrap();
        deleted.sort();
        let mut expected = vec![shared_old.clone(), alone];
        expected.sort();
        assert_eq!(deleted, expected);
        assert!(!alone_file.exists(), "an unshared file goes");
        assert!(shared_file.exists(), "a file another upload names stays");
        assert!(media.get_record(&shared_old).unwrap().is_none());
        assert!(media.get_record(&shared_new).unwrap().is_some());

        let deleted = media.delete_before(u64::MAX, 0).await.unwrap();
        assert_eq!(deleted, vec![shared_new]);
        assert!(!shared_file.exists(), "its last user gone, the file goes");

        let fresh = id(media
            .upload(alice, None, None, body(b"fresh"))
            .await
            .unwrap());
        assert_eq!(media.delete_before(u64::MAX, 0).await.unwrap(), vec![fresh]);
        let fresh_file = media.blob_path(&hex::encode(sha2::Sha256::digest(b"fresh")));
        assert!(
            fresh_file.exists(),
            "a fresh file is kept for a racing upload"
        );
    }
}
