//! The media repository: uploads stored content-addressed (SHA-256) under
//! `<data_dir>/media`, metadata in sled, thumbnails generated once per size and method and
//! cached like uploads, and `create` + asynchronous upload with waiting downloads.
//!
//! Files are written to a temporary file, fsynced and renamed into place before the
//! metadata commit, so an acknowledged upload survives a crash.
//!
//! Thumbnails are made on the blocking pool, a few at a time and with a time limit, from
//! images whose header says they are within `media.max_thumbnail_pixels` and from the
//! first page of PDFs (`pdf.rs`). Media created after the
//! `media.unauthenticated_media_before_ms` cut-off is served only as authenticated media.

#[cfg(test)]
mod cluster_tests;
mod jobs;
mod pdf;
mod retention;
mod thumbnail;
mod waiting;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use rand::{distributions::Alphanumeric, Rng};
use ruma::UserId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::{io::AsyncWriteExt, sync::Semaphore};

pub use self::thumbnail::{ThumbnailMethod, ThumbnailSpec};
use crate::{
    config::Config,
    storage::{keys, Batch, Storage},
    Error, Result,
};

/// How long an id from `/create` may wait for its upload.
const UNUSED_EXPIRY_MS: u64 = 24 * 3600 * 1000;
/// Longest `timeout_ms` honoured for a pending upload.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Outstanding `/create` ids one user may hold.
const MAX_PENDING_PER_USER: usize = 64;
/// `meta` key of the recorded unauthenticated-media cut-off (big-endian ms).
const UNAUTHENTICATED_BEFORE_KEY: &[u8] = b"media_unauthenticated_before";

/// Which API a download or thumbnail request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `/_matrix/client/v1/media/...` with an access token.
    Authenticated,
    /// The legacy unauthenticated `/_matrix/media/{v3,r0}/...` paths: media created before
    /// the cut-off only.
    Unauthenticated,
}

/// What is stored about one media id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaRecord {
    /// Hex SHA-256 of the content (empty while pending).
    pub sha256: String,
    /// Declared content type.
    pub content_type: String,
    /// File name given at upload.
    pub filename: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Uploader.
    pub uploader: String,
    /// Creation time (ms).
    pub created: u64,
    /// `Some(expiry)` while created but not yet uploaded.
    pub pending_until: Option<u64>,
}

/// A cached thumbnail.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ThumbRecord {
    sha256: String,
    content_type: String,
    size: u64,
}

/// Content ready to serve.
#[derive(Debug)]
pub struct Content {
    /// The file holding it.
    pub path: PathBuf,
    /// Content type.
    pub content_type: String,
    /// File name, if known.
    pub filename: Option<String>,
    /// Size in bytes.
    pub size: u64,
}

/// The media service.
pub struct MediaService {
    config: Arc<Config>,
    storage: Arc<Storage>,
    root: PathBuf,
    /// Wakes downloads waiting for an asynchronous upload, per media id.
    waiting: Arc<waiting::Waiting>,
    /// Permits for thumbnail generation (`media.max_concurrent_thumbnails`).
    thumbnail_jobs: Arc<Semaphore>,
    /// As many permits again for PDF previews, so slow documents never hold up images.
    preview_jobs: Arc<Semaphore>,
    /// Media created before this (ms) is still served without authentication.
    unauthenticated_before: u64,
}

fn now_ms() -> u64 {
    crate::users::now_ms()
}

/// Checks a server name / media id path segment (`[A-Za-z0-9_-]+` for ids).
fn valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl MediaService {
    /// Builds the service (the media directory is created on first upload).
    pub fn new(config: Arc<Config>, storage: Arc<Storage>) -> Result<MediaService> {
        let root = config.data_dir.join("media");
        let unauthenticated_before = match config.media.unauthenticated_media_before_ms {
            0 => Self::recorded_cutoff(&storage)?,
            configured => configured,
        };
        let permits = config.media.max_concurrent_thumbnails.max(1);
        let waiting = Arc::<waiting::Waiting>::default();
        if storage.is_shared() {
            waiting.watch(&storage);
        }
        Ok(MediaService {
            thumbnail_jobs: Arc::new(Semaphore::new(permits)),
            preview_jobs: Arc::new(Semaphore::new(permits)),
            config,
            storage,
            root,
            waiting,
            unauthenticated_before,
        })
    }

    /// The cut-off recorded on the first start that knew it (recorded now if absent), so
    /// media from before the upgrade keeps working on the legacy paths.
    fn recorded_cutoff(storage: &Storage) -> Result<u64> {
        let meta = &storage.trees.meta;
        if let Some(v) = meta.get(UNAUTHENTICATED_BEFORE_KEY)? {
            let bytes: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| Error::internal("corrupt media cut-off in meta"))?;
            return Ok(u64::from_be_bytes(bytes));
        }
        let now = now_ms();
        let mut batch = Batch::new();
        batch.insert(meta, UNAUTHENTICATED_BEFORE_KEY, &now.to_be_bytes());
        storage.commit(batch)?;
        Ok(now)
    }

    /// Largest accepted upload.
    pub fn max_upload_size(&self) -> u64 {
        self.config.media.max_upload_size
    }

    fn blob_path(&self, sha: &str) -> PathBuf {
        self.root.join(&sha[..2]).join(sha)
    }

    fn server_name(&self) -> &str {
        &self.config.server_name
    }

    /// Streams `body` into the content store, enforcing the size limit; returns
    /// `(sha256, size)`. The file is durable when this returns.
    async fn store_stream<S, E>(&self, mut body: S) -> Result<(String, u64)>
    where
        S: Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let limit = self.max_upload_size();
        let tmp_name: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let tmp_dir = self.root.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir).await?;
        let tmp = tmp_dir.join(tmp_name);
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| Error::bad_json(format!("reading upload: {e}")))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(Error::too_large(format!(
                        "upload exceeds the limit of {limit} bytes"
                    )));
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.sync_all().await?;
            let sha = hex::encode(hasher.finalize());
            let dest = self.blob_path(&sha);
            let dir = dest.parent().expect("blob path has a parent").to_owned();
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::rename(&tmp, &dest).await?;
            // The rename must be durable too.
            tokio::fs::File::open(&dir).await?.sync_all().await?;
            Ok((sha, size))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    fn record_key(media_id: &str) -> Vec<u8> {
        keys::strs(&[media_id])
    }

    fn get_record(&self, media_id: &str) -> Result<Option<MediaRecord>> {
        self.storage
            .trees
            .media
            .get_json(&Self::record_key(media_id))
    }

    fn new_media_id() -> String {
        rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(24)
            .map(char::from)
            .collect()
    }

    /// Stores an upload; returns its `mxc://` URI. Durable when this returns.
    pub async fn upload<S, E>(
        &self,
        uploader: &UserId,
        content_type: Option<&str>,
        filename: Option<String>,
        body: S,
    ) -> Result<String>
    where
        S: Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (sha256, size) = self.store_stream(body).await?;
        let media_id = Self::new_media_id();
        let record = MediaRecord {
            sha256,
            content_type: content_type
                .unwrap_or("application/octet-stream")
                .to_owned(),
            filename,
            size,
            uploader: uploader.to_string(),
            created: now_ms(),
            pending_until: None,
        };
        let mut batch = Batch::new();
        batch.insert_json(
            &self.storage.trees.media,
            &Self::record_key(&media_id),
            &record,
        )?;
        self.storage.commit(batch)?;
        self.storage.durable().await?;
        Ok(format!("mxc://{}/{media_id}", self.server_name()))
    }

    /// `POST /_matrix/media/v1/create`: reserves an id for a later upload; returns the URI
    /// and its expiry.
    pub async fn create(&self, uploader: &UserId) -> Result<(String, u64)> {
        let now = now_ms();
        let pending = self
            .storage
            .trees
            .media
            .scan_prefix(&[])
            .filter_map(|kv| kv.ok())
            .filter_map(|(_, v)| serde_json::from_slice::<MediaRecord>(&v).ok())
            .filter(|r| r.uploader == uploader.as_str() && r.pending_until.is_some_and(|t| t > now))
            .count();
        if pending >= MAX_PENDING_PER_USER {
            return Err(Error::matrix(
                crate::ErrorKind::RateLimited,
                "M_LIMIT_EXCEEDED",
                "Too many pending media uploads",
            ));
        }
        let media_id = Self::new_media_id();
        let expires = now + UNUSED_EXPIRY_MS;
        let record = MediaRecord {
            sha256: String::new(),
            content_type: String::new(),
            filename: None,
            size: 0,
            uploader: uploader.to_string(),
            created: now,
            pending_until: Some(expires),
        };
        let mut batch = Batch::new();
        batch.insert_json(
            &self.storage.trees.media,
            &Self::record_key(&media_id),
            &record,
        )?;
        self.storage.commit(batch)?;
        self.storage.durable().await?;
        Ok((format!("mxc://{}/{media_id}", self.server_name()), expires))
    }

    /// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`: the upload for a created id.
    pub async fn upload_to<S, E>(
        &self,
        uploader: &UserId,
        server: &str,
        media_id: &str,
        content_type: Option<&str>,
        filename: Option<String>,
        body: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if server != self.server_name() || !valid_media_id(media_id) {
            return Err(Error::not_found("Unknown media id"));
        }
        let record = self
            .get_record(media_id)?
            .ok_or_else(|| Error::not_found("Unknown media id"))?;
        if record.uploader != uploader.as_str() {
            return Err(Error::forbidden("This media id belongs to another user"));
        }
        match record.pending_until {
            None => {
                return Err(Error::matrix(
                    crate::ErrorKind::Conflict,
                    "M_CANNOT_OVERWRITE_MEDIA",
                    "Media already uploaded",
                ))
            }
            Some(t) if t <= now_ms() => return Err(Error::not_found("Media id expired")),
            Some(_) => {}
        }
        let (sha256, size) = self.store_stream(body).await?;
        let done = MediaRecord {
            sha256,
            content_type: content_type
                .unwrap_or("application/octet-stream")
                .to_owned(),
            filename,
            size,
            uploader: uploader.to_string(),
            created: record.created,
            pending_until: None,
        };
        let key = Self::record_key(media_id);
        // Compare-and-swap: two concurrent uploads to one id cannot both win.
        let old = serde_json::to_vec(&record)?;
        let new = serde_json::to_vec(&done)?;
        if !self
            .storage
            .trees
            .media
            .compare_and_swap(&key, Some(&old), Some(new))?
        {
            return Err(Error::matrix(
                crate::ErrorKind::Conflict,
                "M_CANNOT_OVERWRITE_MEDIA",
                "Media already uploaded",
            ));
        }
        self.storage.durable().await?;
        self.waiting.uploaded(media_id);
        Ok(())
    }

    /// How many downloads wait for the upload of `media_id` right now (each holds a clone
    /// of the id's wake-up handle while it waits; the map holds the other one). For the
    /// test hooks, which let a test know a download waits before it uploads.
    pub fn waiting_downloads(&self, media_id: &str) -> usize {
        self.waiting.count(media_id)
    }

    /// The content of a local media id, waiting up to `wait` for a pending upload. Through
    /// [`Access::Unauthenticated`], media created after the cut-off is `M_NOT_FOUND`.
    pub async fn content(
        &self,
        server: &str,
        media_id: &str,
        wait: Duration,
        access: Access,
    ) -> Result<(MediaRecord, Content)> {
        let (record, content) = self.wait_for_content(server, media_id, wait).await?;
        if access == Access::Unauthenticated && record.created >= self.unauthenticated_before {
            return Err(Error::not_found(
                "Media is only served through authenticated media (/_matrix/client/v1/media)",
            ));
        }
        Ok((record, content))
    }

    async fn wait_for_content(
        &self,
        server: &str,
        media_id: &str,
        wait: Duration,
    ) -> Result<(MediaRecord, Content)> {
        if server != self.server_name() {
            // No federation: remote media cannot be fetched.
            return Err(Error::not_found(
                "Remote media is not available on this server",
            ));
        }
        if !valid_media_id(media_id) {
            return Err(Error::not_found("Unknown media id"));
        }
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let notify = self.waiting.handle(media_id);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let record = self
                .get_record(media_id)?
                .ok_or_else(|| Error::not_found("Unknown media id"))?;
            match record.pending_until {
                None => {
                    self.waiting.found(media_id);
                    let content = Content {
                        path: self.blob_path(&record.sha256),
                        content_type: record.content_type.clone(),
                        filename: record.filename.clone(),
                        size: record.size,
                    };
                    return Ok((record, content));
                }
                Some(t) if t <= now_ms() => return Err(Error::not_found("Unknown media id")),
                Some(_) => {}
            }
            tokio::select! {
                _ = &mut notified => continue,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::matrix(
                        crate::ErrorKind::UpstreamTimeout,
                        "M_NOT_YET_UPLOADED",
                        "The media has not been uploaded yet",
                    ));
                }
            }
        }
    }

    /// A thumbnail of local media (generated on first request, then cached): of PNG, JPEG,
    /// GIF and WebP images, and of the first page of PDFs (`application/pdf`, or
    /// `application/octet-stream` starting like one). Other media, or files that cannot be
    /// decoded in `media.thumbnail_timeout_secs`, get 400 `M_UNKNOWN`; images over
    /// `media.max_thumbnail_pixels` and PDFs over `media.max_pdf_preview_size` 413
    /// `M_TOO_LARGE`... unless an image is already small enough, which is then served as
    /// it is.
    pub async fn thumbnail(
        &self,
        server: &str,
        media_id: &str,
        spec: ThumbnailSpec,
        wait: Duration,
        access: Access,
    ) -> Result<Content> {
        let (record, original) = self.content(server, media_id, wait, access).await?;
        let key = keys::strs(&[media_id, &spec.cache_key()]);
        if let Some(t) = self
            .storage
            .trees
            .media_thumbnails
            .get_json::<ThumbRecord>(&key)?
        {
            return Ok(Content {
                path: self.blob_path(&t.sha256),
                content_type: t.content_type,
                filename: None,
                size: t.size,
            });
        }
        let path = original.path.clone();
        let max_pixels = self.config.media.max_thumbnail_pixels;
        let limit = Duration::from_secs(self.config.media.thumbnail_timeout_secs);
        let generated = if thumbnail::can_thumbnail(&record.content_type) {
            let content_type = record.content_type.clone();
            jobs::run_limited(&self.thumbnail_jobs, limit, move || {
                let data = std::fs::read(&path)?;
                thumbnail::generate(&data, &content_type, spec, max_pixels)
            })
            .await?
        } else if may_be_pdf(&record.content_type) {
            let max_size = self.config.media.max_pdf_preview_size;
            if record.size > max_size {
                return Err(Error::too_large(format!(
                    "The file is {} bytes; PDFs over {max_size} bytes are not previewed",
                    record.size
                )));
            }
            jobs::run_limited(&self.preview_jobs, limit, move || {
                let data = std::fs::read(&path)?;
                if !pdf::sniff(&data) {
                    return Err(cannot_thumbnail());
                }
                let png = pdf::render_first_page(data, spec, max_pixels)?;
                Ok(Some((png, "image/png")))
            })
            .await?
        } else {
            return Err(cannot_thumbnail());
        };
        let Some((bytes, thumb_type)) = generated else {
            // Already no larger than asked: the original is the thumbnail.
            return Ok(original);
        };
        let stream = futures_util::stream::once(async move {
            Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))
        });
        let (sha256, size) = self.store_stream(Box::pin(stream)).await?;
        let t = ThumbRecord {
            sha256,
            content_type: thumb_type.to_owned(),
            size,
        };
        let mut batch = Batch::new();
        batch.insert_json(&self.storage.trees.media_thumbnails, &key, &t)?;
        self.storage.commit(batch)?;
        Ok(Content {
            path: self.blob_path(&t.sha256),
            content_type: t.content_type,
            filename: None,
            size: t.size,
        })
    }

    /// The media directory (for tests and tools).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Whether media of this type may be a PDF to preview: declared so, or undeclared (the
/// content then decides).
fn may_be_pdf(content_type: &str) -> bool {
    let base = content_type.split(';').next().unwrap_or("").trim();
    [
        "application/pdf",
        "application/x-pdf",
        "application/octet-stream",
    ]
    .iter()
    .any(|t| base.eq_ignore_ascii_case(t))
}

fn cannot_thumbnail() -> Error {
    Error::matrix(
        crate::ErrorKind::Invalid,
        "M_UNKNOWN",
        "Cannot generate thumbnails for this content type",
    )
}

/// Content types served inline; everything else is an attachment.
const INLINE_TYPES: &[&str] = &[
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// The `Content-Disposition` for serving `content_type` with an optional file name:
/// `inline` only for the safe list above (never HTML or SVG), the name encoded per RFC 6266.
pub fn content_disposition(content_type: &str, filename: Option<&str>) -> String {
    let base = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let kind = if INLINE_TYPES.contains(&base.as_str()) {
        "inline"
    } else {
        "attachment"
    };
    match filename.filter(|f| !f.is_empty()) {
        None => kind.to_owned(),
        Some(name) => {
            let mut encoded = String::new();
            for b in name.bytes() {
                if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                    encoded.push(b as char);
                } else {
                    encoded.push_str(&format!("%{b:02X}"));
                }
            }
            format!("{kind}; filename*=utf-8''{encoded}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_are_safe() {
        assert_eq!(content_disposition("image/png", None), "inline");
        assert_eq!(
            content_disposition("text/html", Some("x.html")),
            "attachment; filename*=utf-8''x.html"
        );
        assert_eq!(content_disposition("image/svg+xml", None), "attachment");
        assert_eq!(
            content_disposition("text/plain; charset=utf-8", None),
            "inline"
        );
        assert_eq!(
            content_disposition("application/pdf", Some("a b\"c;.pdf")),
            "attachment; filename*=utf-8''a%20b%22c%3B.pdf"
        );
        assert_eq!(
            content_disposition("image/png", Some("ü.png")),
            "inline; filename*=utf-8''%C3%BC.png"
        );
    }

    #[test]
    fn media_ids_are_checked() {
        assert!(valid_media_id("abcDEF123_-"));
        assert!(!valid_media_id(""));
        assert!(!valid_media_id("../etc"));
        assert!(!valid_media_id("a/b"));
    }

    fn service() -> (tempfile::TempDir, MediaService) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            media: crate::config::MediaConfig {
                max_upload_size: 16,
                ..Default::default()
            },
            ..Default::default()
        };
        let s = MediaService::new(Arc::new(config), Arc::new(Storage::in_memory())).unwrap();
        (dir, s)
    }

    fn body(
        data: &'static [u8],
    ) -> impl Stream<Item = std::result::Result<bytes::Bytes, std::io::Error>> + Unpin {
        futures_util::stream::iter(vec![Ok(bytes::Bytes::from_static(data))])
    }

    #[tokio::test]
    async fn content_addressed_and_limited() {
        let (_dir, s) = service();
        let alice = <&UserId>::try_from("@alice:localhost").unwrap();
        let a = s
            .upload(alice, Some("text/plain"), None, body(b"same"))
            .await
            .unwrap();
        let b = s
            .upload(alice, Some("text/plain"), None, body(b"same"))
            .await
            .unwrap();
        assert_ne!(a, b, "each upload gets its own id");
        let id_a = a.rsplit('/').next().unwrap();
        let id_b = b.rsplit('/').next().unwrap();
        let (ra, ca) = s
            .content("localhost", id_a, Duration::ZERO, Access::Authenticated)
            .await
            .unwrap();
        let (_, cb) = s
            .content("localhost", id_b, Duration::ZERO, Access::Authenticated)
            .await
            .unwrap();
        assert_eq!(ca.path, cb.path, "identical bytes are stored once");
        assert_eq!(ra.sha256, hex::encode(Sha256::digest(b"same")));
        let err = s
            .upload(alice, None, None, body(b"0123456789abcdefXYZ"))
            .await
            .unwrap_err();
        assert_eq!(err.errcode(), "M_TOO_LARGE");
        // nothing left behind in tmp
        assert_eq!(std::fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn create_then_upload_once() {
        let (_dir, s) = service();
        let alice = <&UserId>::try_from("@alice:localhost").unwrap();
        let bob = <&UserId>::try_from("@bob:localhost").unwrap();
        let (uri, _) = s.create(alice).await.unwrap();
        let id = uri.rsplit('/').next().unwrap().to_owned();
        let err = s
            .content(
                "localhost",
                &id,
                Duration::from_millis(10),
                Access::Authenticated,
            )
            .await
            .unwrap_err();
        assert_eq!(err.errcode(), "M_NOT_YET_UPLOADED");
        let err = s
            .upload_to(bob, "localhost", &id, None, None, body(b"x"))
            .await
            .unwrap_err();
        assert_eq!(err.errcode(), "M_FORBIDDEN");
        s.upload_to(
            alice,
            "localhost",
            &id,
            Some("text/plain"),
            None,
            body(b"x"),
        )
        .await
        .unwrap();
        let err = s
            .upload_to(alice, "localhost", &id, None, None, body(b"y"))
            .await
            .unwrap_err();
        assert_eq!(err.errcode(), "M_CANNOT_OVERWRITE_MEDIA");
        let (r, _) = s
            .content("localhost", &id, Duration::ZERO, Access::Authenticated)
            .await
            .unwrap();
        assert_eq!(r.size, 1);
        // created after the cut-off: not on the unauthenticated paths
        let err = s
            .content("localhost", &id, Duration::ZERO, Access::Unauthenticated)
            .await
            .unwrap_err();
        assert_eq!(err.errcode(), "M_NOT_FOUND");
    }
}
