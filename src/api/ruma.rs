//! The bridge between axum and ruma: the [`Ruma`] extractor (body limit, authentication,
//! ruma request parsing with Matrix error codes) and route registration from each
//! endpoint's ruma metadata, so every r0/v3/unstable alias of a path is served.

use std::{any::TypeId, future::Future, sync::Arc};

use axum::{
    extract::{FromRequest, Path, Request, State},
    response::{IntoResponse, Response},
    routing::{on, MethodFilter},
    Router,
};
use bytes::BytesMut;
use ruma::{
    api::{
        auth_scheme::{AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional},
        client::{
            message::send_message_event, push::set_pushrule, session::login,
            state::send_state_event,
        },
        error::{DeserializationError, FromHttpRequestError},
        path_builder::PathBuilder,
        IncomingRequest, IncomingRequestExt, Metadata, OutgoingResponse, OutgoingResponseExt,
    },
    OwnedDeviceId, OwnedUserId,
};

use crate::{services::Services, users::Session, Error, Result};

/// A parsed, authenticated ruma request.
pub struct Ruma<T> {
    /// The typed request.
    pub body: T,
    /// The authenticated session, when the endpoint takes an access token and one was given.
    pub session: Option<Session>,
    /// The raw JSON body (for endpoints that need fields ruma does not model).
    pub json_body: Option<serde_json::Value>,
    /// The raw query string (for parameters ruma does not model, e.g. MSC4140's delay).
    pub query: Option<String>,
    /// The client's address, for per-address rate limits.
    pub client_ip: Option<std::net::IpAddr>,
}

impl<T> Ruma<T> {
    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

impl<T> Ruma<T> {
    /// The session of an endpoint that requires authentication.
    pub fn session(&self) -> Result<&Session> {
        self.session.as_ref().ok_or_else(Error::missing_token)
    }

    /// The authenticated user.
    pub fn sender_user(&self) -> Result<&OwnedUserId> {
        Ok(&self.session()?.user_id)
    }

    /// The authenticated device.
    pub fn sender_device(&self) -> Result<&OwnedDeviceId> {
        Ok(&self.session()?.device_id)
    }
}

/// How an endpoint authenticates.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum AuthNeed {
    Required,
    Optional,
    None,
}

fn auth_need<T: Metadata>() -> AuthNeed
where
    T::Authentication: 'static,
{
    let id = TypeId::of::<T::Authentication>();
    if id == TypeId::of::<AccessToken>() || id == TypeId::of::<AppserviceToken>() {
        AuthNeed::Required
    } else if id == TypeId::of::<AccessTokenOptional>()
        || id == TypeId::of::<AppserviceTokenOptional>()
    {
        AuthNeed::Optional
    } else {
        AuthNeed::None
    }
}

/// The access token of a request: `Authorization: Bearer` header or `access_token` query.
pub fn access_token(parts: &http::request::Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        return value.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    parts.uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| v.to_owned())
    })
}

/// The session of an access token: an application service's `as_token` (acting as its
/// own user, or as `?user_id=` inside its namespace, on `?device_id=` when given) or a
/// user's access token.
pub fn authenticate(
    services: &Services,
    parts: &http::request::Parts,
    token: &str,
) -> Result<Session> {
    if let Some(reg) = services.appservices.by_as_token(token) {
        let query = parts.uri.query().unwrap_or("");
        let param = |name: &str| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let device = param("org.matrix.msc3202.device_id").or_else(|| param("device_id"));
        return services
            .appservices
            .session(reg, param("user_id").as_deref(), device.as_deref());
    }
    services.users.authenticate(token)
}

/// Maps a ruma parse failure to the Matrix error a client should see.
fn parse_error(e: FromHttpRequestError) -> Error {
    match e {
        FromHttpRequestError::Deserialization(DeserializationError::Ident(e)) => {
            Error::invalid_param(format!("invalid identifier: {e}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Query(e)) => {
            Error::invalid_param(format!("invalid query parameter: {e}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
            Error::bad_json(format!("invalid request body: {e}"))
        }
        FromHttpRequestError::MethodMismatch { .. } => Error::unrecognized(),
        other => Error::bad_json(other.to_string()),
    }
}

impl<T> FromRequest<Arc<Services>> for Ruma<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: 'static,
{
    type Rejection = Error;

    async fn from_request(req: Request, services: &Arc<Services>) -> Result<Self> {
        let (mut parts, body) = req.into_parts();
        let path_args: Vec<String> =
            match Path::<Vec<String>>::from_request_parts(&mut parts, services).await {
                Ok(Path(args)) => args,
                Err(e) => return Err(Error::invalid_param(format!("invalid path: {e}"))),
            };
        let limit = services.config.max_request_size;
        let bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| Error::too_large(format!("request body exceeds {limit} bytes")))?;

        // Clients (matrix-nio's join, for one) send POST/PUT without a body where every
        // field is optional; read that as the empty object, as Synapse does. Not where the
        // body is the event content itself: an empty one is a client bug (`M_NOT_JSON`).
        if bytes.is_empty() && body_is_event_content::<T>() {
            return Err(Error::not_json(
                "The request body must be the event content",
            ));
        }
        let bytes = if bytes.is_empty()
            && (parts.method == http::Method::POST || parts.method == http::Method::PUT)
            && expects_json(&parts)
        {
            bytes::Bytes::from_static(b"{}")
        } else {
            bytes
        };

        let session = match auth_need::<T>() {
            AuthNeed::None => {
                // Public endpoints: a meeting guest's token still may not browse the
                // directory or other users' profiles with them.
                if let Some(session) = access_token(&parts)
                    .and_then(|token| authenticate(services, &parts, &token).ok())
                {
                    super::guest::authorize_public(
                        services,
                        &session,
                        &parts.method,
                        parts.uri.path(),
                    )?;
                }
                None
            }
            // `/login` takes an optional appservice token; a client's stale access token
            // must not stop it from logging in again.
            AuthNeed::Optional
                if TypeId::of::<T::Authentication>() == TypeId::of::<AppserviceTokenOptional>() =>
            {
                access_token(&parts).and_then(|token| {
                    authenticate(services, &parts, &token).ok().or_else(|| {
                        // `/register` and `/login` with an appservice's token act for the
                        // appservice itself: a `?user_id=` naming the user about to be
                        // registered (as mautrix sends it) does not exist yet.
                        let reg = services.appservices.by_as_token(&token)?;
                        services.appservices.session(reg, None, None).ok()
                    })
                })
            }
            need => match access_token(&parts) {
                Some(token) => Some(authenticate(services, &parts, &token)?),
                None if need == AuthNeed::Required => return Err(Error::missing_token()),
                None => None,
            },
        };
        if let Some(session) = &session {
            super::guest::authorize(services, session, &parts.method, parts.uri.path())?;
        }

        let json_body = if bytes.is_empty() || !expects_json(&parts) {
            None
        } else {
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::not_json(format!("request body is not valid JSON: {e}")))?;
            if !value.is_object() {
                return Err(Error::bad_json("request body must be a JSON object"));
            }
            Some(value)
        };

        refuse_ruma_panics::<T>(&bytes)?;
        refuse_postcontent_rules::<T>(&path_args)?;
        let client_ip =
            super::client_ip::ClientIp::of(&parts, services.rate_limits.trusted_proxies()).0;
        let query = parts.uri.query().map(str::to_owned);
        let http_req = http::Request::from_parts(parts, bytes.as_ref());
        let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        let body = T::try_from_http_request(http_req, &args).map_err(parse_error)?;
        Ok(Ruma {
            body,
            session,
            json_body,
            query,
            client_ip,
        })
    }
}

use axum::extract::FromRequestParts;

/// Endpoints whose body is an event's content.
fn body_is_event_content<T: 'static>() -> bool {
    let id = TypeId::of::<T>();
    id == TypeId::of::<send_message_event::v3::Request>()
        || id == TypeId::of::<send_state_event::v3::Request>()
}

/// Refuses bodies that make ruma 0.17.2's deserializers panic rather than fail: `/login`'s
/// `LoginInfo` indexes `type` before checking that it is there, so a body without a string
/// `type` must not reach it.
fn refuse_ruma_panics<T: 'static>(bytes: &[u8]) -> Result<()> {
    if TypeId::of::<T>() == TypeId::of::<login::v3::Request>() {
        if let Ok(serde_json::Value::Object(body)) = serde_json::from_slice(bytes) {
            if !body.get("type").is_some_and(serde_json::Value::is_string) {
                return Err(Error::bad_json("The login `type` must be a string"));
            }
        }
    }
    Ok(())
}

/// MSC4306: a client creating a rule of the `postcontent` kind gets 400 `M_INVALID_PARAM`
/// (ruma's request type cannot name that kind, so it is refused before parsing).
fn refuse_postcontent_rules<T: 'static>(path_args: &[String]) -> Result<()> {
    if TypeId::of::<T>() == TypeId::of::<set_pushrule::v3::Request>() {
        let kind = path_args.iter().rev().nth(1).map(String::as_str);
        if kind.is_some_and(|k| {
            ruma::push::RuleKind::from(k) == ruma::push::RuleKind::PostContent
                || k == super::client::push_rules::POSTCONTENT
        }) {
            return Err(super::client::push_rules::postcontent_refused());
        }
    }
    Ok(())
}

fn expects_json(parts: &http::request::Parts) -> bool {
    match parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        // Clients often omit the content type on JSON requests; only a declared non-JSON
        // type (a media upload) is passed through unparsed.
        Some(ct) => ct.starts_with("application/json") || ct.starts_with("text/plain"),
        None => true,
    }
}

/// A ruma response turned into an HTTP response.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(res) => res
                .map(|body| axum::body::Body::from(body.freeze()))
                .into_response(),
            Err(e) => {
                Error::internal(format!("response serialisation failed: {e}")).into_response()
            }
        }
    }
}

/// Adds an async handler `fn(State<Arc<Services>>, Ruma<Req>) -> Result<Resp>` to a
/// router under every path and the method ruma knows for `Req`.
pub trait RumaHandler<Req> {
    /// Registers the handler.
    fn add_to(self, router: Router<Arc<Services>>) -> Router<Arc<Services>>;
}

impl<Req, F, Fut> RumaHandler<Req> for F
where
    Req: IncomingRequest + Send + 'static,
    Req::Authentication: 'static,
    F: Fn(State<Arc<Services>>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Req::OutgoingResponse>> + Send + 'static,
    Req::OutgoingResponse: Send,
{
    fn add_to(self, mut router: Router<Arc<Services>>) -> Router<Arc<Services>> {
        let filter = MethodFilter::try_from(Req::METHOD).unwrap_or(MethodFilter::GET);
        for path in with_empty_state_key(Req::PATH_BUILDER.all_paths()) {
            let handler = self.clone();
            router = router.route(
                &path,
                on(
                    filter,
                    move |state: State<Arc<Services>>, req: Ruma<Req>| async move {
                        handler(state, req).await.map(RumaResponse)
                    },
                ),
            );
        }
        router
    }
}

/// The paths of an endpoint, plus, for state endpoints ending in `/{state_key}`, the forms
/// clients use for an empty state key: `.../{event_type}` and `.../{event_type}/`.
fn with_empty_state_key<'a>(paths: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out = Vec::new();
    for path in paths {
        out.push(path.to_owned());
        if let Some(base) = path.strip_suffix("/{state_key}") {
            out.push(base.to_owned());
            out.push(format!("{base}/"));
        }
    }
    out
}

/// `router.ruma(handler)`: register a ruma-typed handler.
pub trait RouterExt {
    /// Registers `handler` under its endpoint's paths.
    fn ruma<Req, H: RumaHandler<Req>>(self, handler: H) -> Self;
}

impl RouterExt for Router<Arc<Services>> {
    fn ruma<Req, H: RumaHandler<Req>>(self, handler: H) -> Self {
        handler.add_to(self)
    }
}

/// Adds an async handler `fn(State<Arc<Services>>, Ruma<Req>) -> Result<Json<Value>>`:
/// for endpoints whose response Myelin assembles as JSON itself (e.g. `/sync`).
pub trait RumaJsonHandler<Req> {
    /// Registers the handler.
    fn add_json_to(self, router: Router<Arc<Services>>) -> Router<Arc<Services>>;
}

impl<Req, F, Fut> RumaJsonHandler<Req> for F
where
    Req: IncomingRequest + Send + 'static,
    Req::Authentication: 'static,
    F: Fn(State<Arc<Services>>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<axum::Json<serde_json::Value>>> + Send + 'static,
{
    fn add_json_to(self, mut router: Router<Arc<Services>>) -> Router<Arc<Services>> {
        let filter = MethodFilter::try_from(Req::METHOD).unwrap_or(MethodFilter::GET);
        for path in with_empty_state_key(Req::PATH_BUILDER.all_paths()) {
            let handler = self.clone();
            router = router.route(
                &path,
                on(
                    filter,
                    move |state: State<Arc<Services>>, req: Ruma<Req>| handler(state, req),
                ),
            );
        }
        router
    }
}

/// `router.ruma_json(handler)`: register a ruma-parsed handler that answers raw JSON.
pub trait RouterJsonExt {
    /// Registers `handler` under its endpoint's paths.
    fn ruma_json<Req, H: RumaJsonHandler<Req>>(self, handler: H) -> Self;
}

impl RouterJsonExt for Router<Arc<Services>> {
    fn ruma_json<Req, H: RumaJsonHandler<Req>>(self, handler: H) -> Self {
        handler.add_json_to(self)
    }
}

/// Wraps a JSON value as a ruma `Raw<T>`.
pub fn raw<T>(value: &serde_json::Value) -> Result<ruma::serde::Raw<T>> {
    Ok(ruma::serde::Raw::from_json(
        serde_json::value::to_raw_value(value)?,
    ))
}

/// An authenticated request to an endpoint ruma does not model: the session, the query
/// parameters and the JSON body (`{}` when empty), with the same body limit, token and
/// guest checks as [`Ruma`].
pub struct RawJson {
    /// The authenticated session.
    pub session: Session,
    /// Query parameters (last value wins).
    pub query: std::collections::HashMap<String, String>,
    /// The JSON object body.
    pub body: serde_json::Value,
}

impl FromRequest<Arc<Services>> for RawJson {
    type Rejection = Error;

    async fn from_request(req: Request, services: &Arc<Services>) -> Result<Self> {
        let (mut parts, body) = req.into_parts();
        let limit = services.config.max_request_size;
        let bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| Error::too_large(format!("request body exceeds {limit} bytes")))?;
        let axum::extract::Query(mut query) = axum::extract::Query::<
            std::collections::HashMap<String, String>,
        >::from_request_parts(&mut parts, services)
        .await
        .map_err(|e| Error::invalid_param(format!("invalid query string: {e}")))?;
        query.remove("access_token");
        let token = access_token(&parts).ok_or_else(Error::missing_token)?;
        let session = authenticate(services, &parts, &token)?;
        super::guest::authorize(services, &session, &parts.method, parts.uri.path())?;
        let body = if bytes.is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::not_json(format!("request body is not valid JSON: {e}")))?;
            if !value.is_object() {
                return Err(Error::bad_json("request body must be a JSON object"));
            }
            value
        };
        Ok(RawJson {
            session,
            query,
            body,
        })
    }
}
