//! The Synapse-compatible admin API (`/_synapse/admin/...`), the subset tools such as
//! synapse-admin use: users, rooms, registration tokens, event reports, the server
//! version, and shared-secret registration. Every route but shared-secret registration
//! needs a server administrator's access token (401 `M_MISSING_TOKEN` without one, 403
//! `M_FORBIDDEN` for anyone else) or this run's operator token (`<data_dir>/admin_token`,
//! see `users::operator`).

mod register;
mod reports;
mod room_delete;
mod rooms;
mod tokens;
mod users;

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{FromRequest, FromRequestParts, Path, Request},
    routing::get,
    Json, Router,
};
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::{json, Map, Value};

use crate::{services::Services, Error, Result};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    let router = register::routes(router);
    let router = users::routes(router);
    let router = rooms::routes(router);
    let router = room_delete::routes(router);
    let router = tokens::routes(router);
    let router = reports::routes(router);
    router.route("/_synapse/admin/v1/server_version", get(server_version))
}

/// `GET /_synapse/admin/v1/server_version`
async fn server_version(_admin: AdminRequest) -> Json<Value> {
    Json(json!({ "server_version": format!("myelin {}", env!("CARGO_PKG_VERSION")) }))
}

/// Who is calling the admin API.
#[derive(Clone, Debug)]
pub(crate) enum Caller {
    /// The holder of this run's operator token.
    Operator,
    /// A server administrator.
    Admin(OwnedUserId),
}

impl Caller {
    /// The administrator's user id (none for the operator token).
    pub(crate) fn user(&self) -> Option<&UserId> {
        match self {
            Caller::Operator => None,
            Caller::Admin(user) => Some(user),
        }
    }
}

/// An authorised admin API request: the caller, the path parameters, the query
/// parameters and the JSON object body (`{}` when empty). Authorisation comes first, so
/// a non-administrator learns nothing from the other parts.
pub(crate) struct AdminRequest {
    pub caller: Caller,
    path: Vec<String>,
    query: HashMap<String, String>,
    pub body: Map<String, Value>,
}

/// Authorises the bearer of `token` on the admin API.
pub(crate) fn authorise_admin(services: &Services, token: Option<&str>) -> Result<Caller> {
    let token = token.ok_or_else(Error::missing_token)?;
    if services.users.is_operator_token(token) {
        return Ok(Caller::Operator);
    }
    let session = services.users.authenticate(token)?;
    if !services.users.is_admin(&session.user_id)? {
        return Err(Error::forbidden("You are not a server admin"));
    }
    Ok(Caller::Admin(session.user_id))
}

impl FromRequest<Arc<Services>> for AdminRequest {
    type Rejection = Error;

    async fn from_request(req: Request, services: &Arc<Services>) -> Result<Self> {
        let (mut parts, body) = req.into_parts();
        let token = crate::api::ruma::access_token(&parts);
        let caller = authorise_admin(services, token.as_deref())?;
        let path = match Path::<Vec<String>>::from_request_parts(&mut parts, services).await {
            Ok(Path(args)) => args,
            Err(e) => return Err(Error::invalid_param(format!("invalid path: {e}"))),
        };
        let axum::extract::Query(mut query) =
            axum::extract::Query::<HashMap<String, String>>::from_request_parts(
                &mut parts, services,
            )
            .await
            .map_err(|e| Error::invalid_param(format!("invalid query string: {e}")))?;
        query.remove("access_token");
        let limit = services.config.max_request_size;
        let bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| Error::too_large(format!("request body exceeds {limit} bytes")))?;
        let body = if bytes.is_empty() {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => map,
                Ok(_) => return Err(Error::bad_json("request body must be a JSON object")),
                Err(e) => {
                    return Err(Error::not_json(format!(
                        "request body is not valid JSON: {e}"
                    )))
                }
            }
        };
        Ok(AdminRequest {
            caller,
            path,
            query,
            body,
        })
    }
}

impl AdminRequest {
    fn path_param(&self, index: usize) -> Result<&str> {
        self.path
            .get(index)
            .map(String::as_str)
            .ok_or_else(|| Error::internal("admin route without its path parameter"))
    }

    /// Path parameter `index` as a user id of this server (400 otherwise).
    pub fn local_user(&self, services: &Services, index: usize) -> Result<OwnedUserId> {
        let user = UserId::parse(self.path_param(index)?)
            .map_err(|e| Error::invalid_param(format!("invalid user id: {e}")))?;
        if user.server_name().as_str() != services.users.server_name() {
            return Err(Error::invalid_param("Can only handle local users"));
        }
        Ok(user)
    }

    /// Path parameter `index` as a room id (400 otherwise).
    pub fn room_id(&self, index: usize) -> Result<OwnedRoomId> {
        OwnedRoomId::try_from(self.path_param(index)?)
            .map_err(|e| Error::invalid_param(format!("invalid room id: {e}")))
    }

    /// Path parameter `index` as it came.
    pub fn text_param(&self, index: usize) -> Result<&str> {
        self.path_param(index)
    }

    /// Query parameter `name`.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// Query parameter `name` as a non-negative integer.
    pub fn query_u64(&self, name: &str) -> Result<Option<u64>> {
        self.query(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    Error::invalid_param(format!("{name} must be a non-negative integer"))
                })
            })
            .transpose()
    }

    /// Query parameter `name` as a boolean (`true`/`false`), `default` when absent.
    pub fn query_bool(&self, name: &str, default: bool) -> Result<bool> {
        match self.query(name) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(Error::invalid_param(format!(
                "{name} must be true or false"
            ))),
        }
    }

    /// `dir`: `f` (default) or `b`; true for backwards.
    pub fn backwards(&self) -> Result<bool> {
        match self.query("dir") {
            None | Some("f") => Ok(false),
            Some("b") => Ok(true),
            Some(_) => Err(Error::invalid_param("dir must be f or b")),
        }
    }

    /// The page `from`..`from + limit` of `items` (limit default 100) and the offset of
    /// the next page when there is one.
    pub fn page<T>(&self, items: Vec<T>) -> Result<(Vec<T>, Option<usize>)> {
        let from = self.query_u64("from")?.unwrap_or(0) as usize;
        let limit = self.query_u64("limit")?.unwrap_or(100) as usize;
        let total = items.len();
        let page: Vec<T> = items.into_iter().skip(from).take(limit).collect();
        let end = from.saturating_add(page.len());
        Ok((page, (end < total).then_some(end)))
    }

    /// Body field `name` as a string, if present and not null.
    pub fn body_str(&self, name: &str) -> Result<Option<&str>> {
        match self.body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Error::invalid_param(format!("{name} must be a string"))),
        }
    }

    /// Body field `name` as a boolean, if present and not null.
    pub fn body_bool(&self, name: &str) -> Result<Option<bool>> {
        match self.body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Error::invalid_param(format!("{name} must be a boolean"))),
        }
    }

    /// Body field `name` as a non-negative integer: absent (`None`), null (`Some(None)`)
    /// or a value.
    pub fn body_u64(&self, name: &str) -> Result<Option<Option<u64>>> {
        match self.body.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => v.as_u64().map(|n| Some(Some(n))).ok_or_else(|| {
                Error::invalid_param(format!("{name} must be a non-negative integer"))
            }),
        }
    }
}
