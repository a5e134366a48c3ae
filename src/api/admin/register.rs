//! Synapse-compatible admin registration: `GET`/`POST /_synapse/admin/v1/register`
//! (shared-secret registration, used by `register_new_matrix_user` and load tools).
//! Works regardless of `registration.mode`, only when `registration.shared_secret` is set.

use std::sync::Arc;

use axum::{extract::State, routing::get, Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{services::Services, users::check_password_policy, Error, Result};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router.route("/_synapse/admin/v1/register", get(nonce).post(register))
}

async fn nonce(State(services): State<Arc<Services>>) -> Result<Json<Value>> {
    Ok(Json(
        json!({ "nonce": services.users.issue_registration_nonce().await? }),
    ))
}

#[derive(Deserialize)]
struct RegisterBody {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    mac: String,
    displayname: Option<String>,
}

async fn register(State(services): State<Arc<Services>>, body: Bytes) -> Result<Json<Value>> {
    if body.len() > services.config.max_request_size {
        return Err(Error::too_large("request body too large"));
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| Error::not_json(format!("request body is not valid JSON: {e}")))?;
    let req: RegisterBody = serde_json::from_value(value)
        .map_err(|e| Error::bad_json(format!("invalid request body: {e}")))?;
    let users = &services.users;
    users.check_shared_secret_registration(
        &req.nonce,
        &req.username,
        &req.password,
        req.admin,
        &req.mac,
    )?;
    users.check_available(&req.username)?;
    check_password_policy(&req.password)?;
    let user = services
        .accounts
        .create(
            &req.username,
            Some(&req.password),
            req.admin,
            req.displayname,
        )
        .await?;
    let (token, device) = users.create_session(&user, None, None).await?;
    Ok(Json(json!({
        "user_id": user,
        "access_token": token,
        "device_id": device,
        "home_server": users.server_name(),
    })))
}
