//! Admin API, registration tokens: create, list, get, update and delete (Synapse's
//! `/_synapse/admin/v1/registration_tokens...` shapes).

use std::sync::Arc;

use axum::{
    extract::State,
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};

use super::AdminRequest;
use crate::{
    services::Services,
    users::{NewRegistrationToken, RegistrationToken},
    Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .route("/_synapse/admin/v1/registration_tokens", get(list_tokens))
        .route(
            "/_synapse/admin/v1/registration_tokens/new",
            post(new_token),
        )
        .route(
            "/_synapse/admin/v1/registration_tokens/{token}",
            get(get_token).put(update_token).delete(delete_token),
        )
}

fn token_json(t: &RegistrationToken) -> Value {
    json!({
        "token": t.token,
        "uses_allowed": t.uses_allowed,
        "pending": 0,
        "completed": t.completed,
        "expiry_time": t.expiry_time,
    })
}

/// `GET /_synapse/admin/v1/registration_tokens` (`?valid=true|false`)
async fn list_tokens(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let valid = match req.query("valid") {
        None => None,
        Some(_) => Some(req.query_bool("valid", true)?),
    };
    let tokens = services.users.list_registration_tokens(valid)?;
    Ok(Json(json!({
        "registration_tokens": tokens.iter().map(token_json).collect::<Vec<_>>(),
    })))
}

/// `POST /_synapse/admin/v1/registration_tokens/new`
async fn new_token(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let new = NewRegistrationToken {
        token: req.body_str("token")?.map(str::to_owned),
        length: req.body_u64("length")?.flatten(),
        uses_allowed: req.body_u64("uses_allowed")?.flatten(),
        expiry_time: req.body_u64("expiry_time")?.flatten(),
    };
    let token = services.users.create_registration_token(new).await?;
    Ok(Json(token_json(&token)))
}

/// `GET /_synapse/admin/v1/registration_tokens/{token}`
async fn get_token(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let token = services.users.registration_token(req.text_param(0)?)?;
    Ok(Json(token_json(&token)))
}

/// `PUT /_synapse/admin/v1/registration_tokens/{token}`: `uses_allowed` and
/// `expiry_time` (null clears a limit, an absent field keeps it).
async fn update_token(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let uses_allowed = req.body_u64("uses_allowed")?;
    let expiry_time = req.body_u64("expiry_time")?;
    let token = services
        .users
        .update_registration_token(req.text_param(0)?, uses_allowed, expiry_time)
        .await?;
    Ok(Json(token_json(&token)))
}

/// `DELETE /_synapse/admin/v1/registration_tokens/{token}`
async fn delete_token(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    services
        .users
        .delete_registration_token(req.text_param(0)?)
        .await?;
    Ok(Json(json!({})))
}
