//! Media endpoints: authenticated media (`/_matrix/client/v1/media/...`, access token
//! required) and the legacy `/_matrix/media/{v3,r0}/...` paths, `create` + asynchronous
//! upload. Uploads stream to disk under their own size limit (`media.max_upload_size`),
//! not the JSON body limit. Served content carries headers that keep user uploads from
//! running as active content in the browser.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Path, Query, Request, State},
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use serde_json::json;

use crate::{
    api::client_ip::ClientIp,
    media::{content_disposition, Access, Content, ThumbnailMethod, ThumbnailSpec},
    ratelimit::Action,
    services::Services,
    users::Session,
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    let mut router = router
        .route("/_matrix/client/v1/media/config", get(config_authed))
        .route(
            "/_matrix/client/v1/media/download/{server}/{media_id}",
            get(download_authed),
        )
        .route(
            "/_matrix/client/v1/media/download/{server}/{media_id}/{filename}",
            get(download_authed_named),
        )
        .route(
            "/_matrix/client/v1/media/thumbnail/{server}/{media_id}",
            get(thumbnail_authed),
        )
        .route("/_matrix/media/v1/create", post(create));
    for version in ["v3", "r0"] {
        router = router
            .route(
                &format!("/_matrix/media/{version}/config"),
                get(config_authed),
            )
            .route(&format!("/_matrix/media/{version}/upload"), post(upload))
            .route(
                &format!("/_matrix/media/{version}/upload/{{server}}/{{media_id}}"),
                put(upload_to),
            )
            .route(
                &format!("/_matrix/media/{version}/download/{{server}}/{{media_id}}"),
                get(download_legacy),
            )
            .route(
                &format!("/_matrix/media/{version}/download/{{server}}/{{media_id}}/{{filename}}"),
                get(download_legacy_named),
            )
            .route(
                &format!("/_matrix/media/{version}/thumbnail/{{server}}/{{media_id}}"),
                get(thumbnail_legacy),
            );
    }
    router
}

fn authenticate(
    services: &Services,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Session> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .or_else(|| query.get("access_token").cloned())
        .ok_or_else(Error::missing_token)?;
    services.users.authenticate(&token)
}

fn no_guests(session: &Session) -> Result<()> {
    if session.is_guest {
        return Err(Error::guest_access_forbidden("Guests may not upload media"));
    }
    Ok(())
}

fn wait_of(query: &HashMap<String, String>) -> Result<Duration> {
    match query.get("timeout_ms") {
        None => Ok(Duration::from_secs(20)),
        Some(v) => v
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| Error::invalid_param("timeout_ms must be a number")),
    }
}

/// `GET .../config`
async fn config_authed(
    State(services): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>> {
    authenticate(&services, &headers, &query)?;
    Ok(Json(
        json!({ "m.upload.size": services.media.max_upload_size() }),
    ))
}

fn content_type_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `POST /_matrix/media/v3/upload?filename=`
async fn upload(
    State(services): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Json<serde_json::Value>> {
    let (parts, body) = req.into_parts();
    let session = authenticate(&services, &parts.headers, &query)?;
    no_guests(&session)?;
    services
        .rate_limits
        .check_session(Action::Upload, &session)?;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > services.media.max_upload_size()) {
        return Err(Error::too_large("upload exceeds the size limit"));
    }
    let uri = services
        .media
        .upload(
            &session.user_id,
            content_type_of(&parts.headers).as_deref(),
            query.get("filename").cloned(),
            body.into_data_stream(),
        )
        .await?;
    Ok(Json(json!({ "content_uri": uri })))
}

/// `POST /_matrix/media/v1/create`
async fn create(
    State(services): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>> {
    let session = authenticate(&services, &headers, &query)?;
    no_guests(&session)?;
    let (uri, expires) = services.media.create(&session.user_id).await?;
    Ok(Json(
        json!({ "content_uri": uri, "unused_expires_at": expires }),
    ))
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`
async fn upload_to(
    State(services): State<Arc<Services>>,
    Path((server, media_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Json<serde_json::Value>> {
    let (parts, body) = req.into_parts();
    let session = authenticate(&services, &parts.headers, &query)?;
    no_guests(&session)?;
    services
        .rate_limits
        .check_session(Action::Upload, &session)?;
    services
        .media
        .upload_to(
            &session.user_id,
            &server,
            &media_id,
            content_type_of(&parts.headers).as_deref(),
            query.get("filename").cloned(),
            body.into_data_stream(),
        )
        .await?;
    Ok(Json(json!({})))
}

/// Streams stored content with safe-serving headers.
async fn serve(content: Content, filename: Option<&str>) -> Result<Response> {
    let file = tokio::fs::File::open(&content.path).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let name = filename.or(content.filename.as_deref());
    let mut response = body.into_response();
    let h = response.headers_mut();
    let header_value = |v: &str| {
        HeaderValue::from_str(v)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
    };
    h.insert(header::CONTENT_TYPE, header_value(&content.content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(content.size));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&content_disposition(&content.content_type, name))
            .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
             style-src 'unsafe-inline'; media-src 'self'; object-src 'self';",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400, immutable"),
    );
    Ok(response)
}

async fn download(
    services: &Services,
    (server, media_id): (&str, &str),
    filename: Option<&str>,
    query: &HashMap<String, String>,
    access: Access,
) -> Result<Response> {
    let (_, content) = services
        .media
        .content(server, media_id, wait_of(query)?, access)
        .await?;
    serve(content, filename).await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`
async fn download_authed(
    State(services): State<Arc<Services>>,
    Path((server, media_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    authenticate(&services, &headers, &query)?;
    download(
        &services,
        (&server, &media_id),
        None,
        &query,
        Access::Authenticated,
    )
    .await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`
async fn download_authed_named(
    State(services): State<Arc<Services>>,
    Path((server, media_id, filename)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    authenticate(&services, &headers, &query)?;
    download(
        &services,
        (&server, &media_id),
        Some(&filename),
        &query,
        Access::Authenticated,
    )
    .await
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}` (unauthenticated, legacy: media
/// from before `media.unauthenticated_media_before_ms` only)
async fn download_legacy(
    State(services): State<Arc<Services>>,
    Path((server, media_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    download(
        &services,
        (&server, &media_id),
        None,
        &query,
        Access::Unauthenticated,
    )
    .await
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}` (legacy, as above)
async fn download_legacy_named(
    State(services): State<Arc<Services>>,
    Path((server, media_id, filename)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    download(
        &services,
        (&server, &media_id),
        Some(&filename),
        &query,
        Access::Unauthenticated,
    )
    .await
}

fn spec_of(query: &HashMap<String, String>) -> Result<ThumbnailSpec> {
    let dim = |k: &str| -> Result<u32> {
        query
            .get(k)
            .ok_or_else(|| Error::missing_param(format!("{k} is required")))?
            .parse()
            .map_err(|_| Error::invalid_param(format!("{k} must be a positive integer")))
    };
    let method = match query.get("method").map(String::as_str) {
        None | Some("scale") => ThumbnailMethod::Scale,
        Some("crop") => ThumbnailMethod::Crop,
        Some(other) => return Err(Error::invalid_param(format!("unknown method {other}"))),
    };
    ThumbnailSpec::new(dim("width")?, dim("height")?, method)
}

async fn thumbnail(
    services: &Services,
    (server, media_id): (&str, &str),
    query: &HashMap<String, String>,
    access: Access,
) -> Result<Response> {
    let spec = spec_of(query)?;
    let content = services
        .media
        .thumbnail(server, media_id, spec, wait_of(query)?, access)
        .await?;
    serve(content, None).await
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`
async fn thumbnail_authed(
    State(services): State<Arc<Services>>,
    Path((server, media_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    let session = authenticate(&services, &headers, &query)?;
    services
        .rate_limits
        .check_session(Action::Thumbnail, &session)?;
    thumbnail(
        &services,
        (&server, &media_id),
        &query,
        Access::Authenticated,
    )
    .await
}

/// `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}` (legacy, as the download)
async fn thumbnail_legacy(
    State(services): State<Arc<Services>>,
    Path((server, media_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    ClientIp(ip): ClientIp,
) -> Result<Response> {
    services.rate_limits.check_ip(Action::Thumbnail, ip)?;
    thumbnail(
        &services,
        (&server, &media_id),
        &query,
        Access::Unauthenticated,
    )
    .await
}
