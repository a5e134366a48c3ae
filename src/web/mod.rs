//! Myelin Meet: the page a meeting's join link opens (`GET /meet/{token}`), for people
//! without a Matrix client. Plain HTML, CSS and ES modules embedded in the binary; the page
//! talks to this server's client-server API and to the SFU (JSON signalling) with the
//! browser's own `RTCPeerConnection`. No build step, no third-party code.
//!
//! - `GET /meet/{token}`: the page (`no-cache`, strict `Content-Security-Policy`); 404 and
//!   a short page for an unknown or revoked link.
//! - `GET /meet/assets/{name}`: its stylesheet and modules, referenced with a content hash
//!   (`?v=`), so they are cached for a year (`immutable`).

use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use crate::{services::Services, Error};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// The page's stylesheet and modules, each with one job (see the files' heads).
const ASSETS: &[Asset] = &[
    Asset {
        name: "meet.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("meet.css"),
    },
    Asset {
        name: "meet.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("meet.js"),
    },
    Asset {
        name: "matrix.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("matrix.js"),
    },
    Asset {
        name: "sfu.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("sfu.js"),
    },
    Asset {
        name: "devices.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("devices.js"),
    },
    Asset {
        name: "grid.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("grid.js"),
    },
    Asset {
        name: "panel.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("panel.js"),
    },
];

const PAGE: &str = include_str!("meet.html");

/// What an unknown or revoked link shows.
const GONE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Meeting not found</title></head><body><h1>This meeting link is not valid</h1>\
<p>It may have been revoked. Ask the meeting's organiser for a new link.</p></body></html>";

pub fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .route("/meet/{token}", get(page))
        .route("/meet/assets/{name}", get(asset))
}

/// A content hash (FNV-1a, 64 bits) for cache busting; computed at compile time.
const fn fnv(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The version every asset URL carries: one hash over all of them, because the modules
/// import each other by plain names.
fn version() -> String {
    let mut hash = 0u64;
    for asset in ASSETS {
        hash = hash.rotate_left(7) ^ fnv(asset.body.as_bytes());
    }
    format!("{hash:016x}")
}

/// The origin (`scheme://host[:port]`) of a URL, for the policy; `None` when it has none.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return None;
    }
    matches!(scheme, "http" | "https" | "ws" | "wss").then(|| format!("{scheme}://{host}"))
}

/// The page's `Content-Security-Policy`: its own scripts and styles only, media from the
/// devices, connections to this server, the token service and the SFU.
fn policy(services: &Services) -> String {
    let mut connect = vec!["'self'".to_owned()];
    for url in [
        services.config.rtc_service_url(),
        services.config.rtc.livekit_url.clone(),
    ] {
        if let Some(o) = origin(&url) {
            if !connect.contains(&o) {
                connect.push(o);
            }
        }
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
         media-src 'self' blob: mediastream:; connect-src {}; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'",
        connect.join(" ")
    )
}

/// `GET /meet/{token}`: the meeting page, or 404 for a link that does not (or no longer)
/// exists.
async fn page(State(services): State<Arc<Services>>, Path(token): Path<String>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(value) = HeaderValue::from_str(&policy(&services)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    match services.meetings.lobby(&token) {
        Ok(_) => {
            let body = PAGE.replace("{{version}}", &version());
            (StatusCode::OK, headers, body).into_response()
        }
        Err(e) if e.errcode() == "M_NOT_FOUND" => {
            (StatusCode::NOT_FOUND, headers, GONE).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /meet/assets/{name}[?v=…]`: one of the page's files. With the current version it
/// is cached for good; any other request is revalidated every time.
async fn asset(Path(name): Path<String>, Query(query): Query<AssetQuery>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return Error::not_found("no such file").into_response();
    };
    let version = version();
    let cache = if query.v.as_deref() == Some(version.as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        asset.body.replace("{{version}}", &version),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct AssetQuery {
    v: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_of_urls() {
        assert_eq!(
            origin("ws://127.0.0.1:7880").as_deref(),
            Some("ws://127.0.0.1:7880")
        );
        assert_eq!(
            origin("https://matrix.example.org/livekit/jwt").as_deref(),
            Some("https://matrix.example.org")
        );
        assert_eq!(
            origin("wss://[::1]:443/x").as_deref(),
            Some("wss://[::1]:443")
        );
        assert_eq!(origin("not a url"), None);
        assert_eq!(origin("javascript://x"), None);
        assert_eq!(origin("https://evil.org; script-src *"), None);
    }

    #[test]
    fn every_module_the_page_names_is_embedded() {
        let version = version();
        let page = PAGE.replace("{{version}}", &version);
        assert!(page.contains(&format!("/meet/assets/meet.js?v={version}")));
        assert!(page.contains(&format!("/meet/assets/meet.css?v={version}")));
        for asset in ASSETS {
            assert!(!asset.body.is_empty(), "{}", asset.name);
        }
        // Modules import each other as `./name.js?v={{version}}`; each one named exists.
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for part in asset.body.split("from './").skip(1) {
                let name = part.split(['\'', '?']).next().unwrap_or_default();
                assert!(
                    part.split('\'')
                        .next()
                        .unwrap_or_default()
                        .ends_with("?v={{version}}"),
                    "{} imports {name} without the version",
                    asset.name
                );
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{} imports {name}, which is not embedded",
                    asset.name
                );
            }
        }
    }

    #[test]
    fn the_version_follows_the_content() {
        assert_eq!(version(), version());
        assert_ne!(fnv(b"a"), fnv(b"b"));
    }
}
