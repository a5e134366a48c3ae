//! `MYELIN_*` environment overrides of the file's settings (`Config::apply_env`), and the
//! parsers of their values that every section uses.

use std::path::PathBuf;

use super::{Config, RegistrationMode, SfuEntry, StorageEngine};

impl Config {
    /// Applies environment overrides; `lookup` returns a variable's value.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = lookup("MYELIN_SERVER_NAME") {
            self.server_name = v;
        }
        if let Some(v) = lookup("MYELIN_LISTEN") {
            self.listen = v
                .parse()
                .map_err(|e| anyhow::anyhow!("MYELIN_LISTEN={v}: {e}"))?;
        }
        if let Some(v) = lookup("MYELIN_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = lookup("MYELIN_PUBLIC_BASE_URL") {
            self.public_base_url = v;
        }
        if let Some(v) = lookup("MYELIN_MAX_REQUEST_SIZE") {
            self.max_request_size = v
                .parse()
                .map_err(|e| anyhow::anyhow!("MYELIN_MAX_REQUEST_SIZE={v}: {e}"))?;
        }
        if let Some(v) = lookup("MYELIN_REGISTRATION_MODE") {
            self.registration.mode = match v.as_str() {
                "closed" => RegistrationMode::Closed,
                "open" => RegistrationMode::Open,
                "token" => RegistrationMode::Token,
                other => anyhow::bail!(
                    "MYELIN_REGISTRATION_MODE={other}: expected closed, open or token"
                ),
            };
        }
        if let Some(v) = lookup("MYELIN_REGISTRATION_SHARED_SECRET") {
            self.registration.shared_secret = v;
        }
        if let Some(v) = lookup("MYELIN_REGISTRATION_TOKEN") {
            self.registration.tokens = v
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
        }
        self.apply_media_env(&lookup)?;
        self.apply_push_env(&lookup)?;
        self.rate_limits.apply_env(&lookup)?;
        self.limits.apply_env(&lookup)?;
        self.groups.apply_env(&lookup)?;
        self.meetings.apply_env(&lookup)?;
        self.metrics.apply_env(&lookup)?;
        self.log.apply_env(&lookup)?;
        if let Some(v) = lookup("MYELIN_REGISTRATION_ALLOW_GUESTS") {
            self.registration.allow_guests = match v.as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                other => anyhow::bail!(
                    "MYELIN_REGISTRATION_ALLOW_GUESTS={other}: expected true or false"
                ),
            };
        }
        self.apply_rtc_env(&lookup)
    }

    fn apply_media_env(&mut self, lookup: &impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let media = &mut self.media;
        if let Some(v) = lookup("MYELIN_MEDIA_MAX_UPLOAD_SIZE") {
            media.max_upload_size = number("MYELIN_MEDIA_MAX_UPLOAD_SIZE", &v)?;
        }
        if let Some(v) = lookup("MYELIN_MEDIA_MAX_THUMBNAIL_PIXELS") {
            media.max_thumbnail_pixels = number("MYELIN_MEDIA_MAX_THUMBNAIL_PIXELS", &v)?;
        }
        if let Some(v) = lookup("MYELIN_MEDIA_MAX_CONCURRENT_THUMBNAILS") {
            media.max_concurrent_thumbnails = number("MYELIN_MEDIA_MAX_CONCURRENT_THUMBNAILS", &v)?;
        }
        if let Some(v) = lookup("MYELIN_MEDIA_MAX_PDF_PREVIEW_SIZE") {
            media.max_pdf_preview_size = number("MYELIN_MEDIA_MAX_PDF_PREVIEW_SIZE", &v)?;
        }
        if let Some(v) = lookup("MYELIN_MEDIA_THUMBNAIL_TIMEOUT_SECS") {
            media.thumbnail_timeout_secs = number("MYELIN_MEDIA_THUMBNAIL_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = lookup("MYELIN_MEDIA_RETENTION_DAYS") {
            media.retention_days = number("MYELIN_MEDIA_RETENTION_DAYS", &v)?;
        }
        if let Some(v) = lookup("MYELIN_MEDIA_UNAUTHENTICATED_MEDIA_BEFORE_MS") {
            media.unauthenticated_media_before_ms =
                number("MYELIN_MEDIA_UNAUTHENTICATED_MEDIA_BEFORE_MS", &v)?;
        }
        Ok(())
    }

    fn apply_push_env(&mut self, lookup: &impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = lookup("MYELIN_PUSH_GATEWAY_ALLOW_CIDRS") {
            self.push.gateway_allow_cidrs = v
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
        }
        Ok(())
    }

    fn apply_rtc_env(&mut self, lookup: &impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let rtc = &mut self.rtc;
        if let Some(v) = lookup("MYELIN_RTC_LIVEKIT_URL") {
            rtc.livekit_url = v;
        }
        if let Some(v) = lookup("MYELIN_RTC_LIVEKIT_API_KEY") {
            rtc.livekit_api_key = v;
        }
        if let Some(v) = lookup("MYELIN_RTC_LIVEKIT_API_SECRET") {
            rtc.livekit_api_secret = v;
        }
        if let Some(v) = lookup("MYELIN_RTC_EMBEDDED_SFU") {
            rtc.embedded_sfu = match v.as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                other => anyhow::bail!("MYELIN_RTC_EMBEDDED_SFU={other}: expected true or false"),
            };
        }
        if let Some(v) = lookup("MYELIN_RTC_SFU_CONFIG") {
            rtc.sfu_config = v;
        }
        if let Some(v) = lookup("MYELIN_RTC_SFU_INTERNAL_SECRET") {
            rtc.sfu_internal_secret = v;
        }
        if let Some(v) = lookup("MYELIN_RTC_JWT_SERVICE_URL") {
            rtc.jwt_service_url = v;
        }
        if let Some(v) = lookup("MYELIN_RTC_TOKEN_TTL_SECS") {
            rtc.token_ttl_secs = number("MYELIN_RTC_TOKEN_TTL_SECS", &v)?;
        }
        if let Some(v) = lookup("MYELIN_RTC_MAX_DELAY_MS") {
            rtc.max_delay_ms = number("MYELIN_RTC_MAX_DELAY_MS", &v)?;
        }
        if let Some(v) = lookup("MYELIN_APPSERVICES") {
            self.appservices = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        if let Some(v) = lookup("MYELIN_RTC_MAX_DELAYED_PER_USER") {
            rtc.max_delayed_per_user = number("MYELIN_RTC_MAX_DELAYED_PER_USER", &v)?;
        }
        if let Some(v) = lookup("MYELIN_RTC_RECORDER") {
            rtc.recorder = v;
        }
        if let Some(v) = lookup("MYELIN_RTC_SFUS") {
            // A comma-separated list of SFU URLs (their internal API derived from each).
            rtc.sfus = v
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(|url| SfuEntry {
                    url: url.to_owned(),
                    ..SfuEntry::default()
                })
                .collect();
        }
        if let Some(v) = lookup("MYELIN_STORAGE_ENGINE") {
            self.storage.engine = match v.as_str() {
                "sled" => StorageEngine::Sled,
                "postgres" => StorageEngine::Postgres,
                other => anyhow::bail!("MYELIN_STORAGE_ENGINE={other}: expected sled or postgres"),
            };
        }
        if let Some(v) = lookup("MYELIN_STORAGE_POSTGRES_URL") {
            self.storage.postgres_url = v;
        }
        if let Some(v) = lookup("MYELIN_STORAGE_POSTGRES_SHARED") {
            self.storage.postgres_shared = boolean("MYELIN_STORAGE_POSTGRES_SHARED", &v)?;
        }
        Ok(())
    }
}

/// Parses the numeric value of environment variable `name`.
pub(super) fn number<T: std::str::FromStr>(name: &str, v: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| anyhow::anyhow!("{name}={v}: {e}"))
}

/// Parses the boolean value of environment variable `name`.
pub(super) fn boolean(name: &str, v: &str) -> anyhow::Result<bool> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => anyhow::bail!("{name}={other}: expected true or false"),
    }
}
