//! Login and logout.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::client::session::{
    get_login_types::{
        self,
        v3::{LoginType, PasswordLoginType},
    },
    login::{self, v3::LoginInfo},
    logout, logout_all,
};
use serde_json::Value;

use crate::{
    api::ruma::{RouterExt, Ruma},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router
        .ruma(get_login_types)
        .ruma(login)
        .ruma(logout)
        .ruma(logout_all)
}

/// `GET /_matrix/client/v3/login`
async fn get_login_types(
    State(_services): State<Arc<Services>>,
    _req: Ruma<get_login_types::v3::Request>,
) -> Result<get_login_types::v3::Response> {
    Ok(get_login_types::v3::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
    ]))
}

/// The user a password login names: `identifier.user` (type `m.id.user`) or the legacy
/// top-level `user`.
fn login_name(body: Option<&Value>) -> Result<&str> {
    let body = body.ok_or_else(|| Error::missing_param("Missing login body"))?;
    match body.get("identifier") {
        Some(identifier) => {
            if identifier.get("type").and_then(Value::as_str) != Some("m.id.user") {
                return Err(Error::bad_request("Unsupported identifier type"));
            }
            identifier.get("user").and_then(Value::as_str)
        }
        None => body.get("user").and_then(Value::as_str),
    }
    .ok_or_else(|| Error::missing_param("Missing user identifier"))
}

/// `POST /_matrix/client/v3/login`
async fn login(
    State(services): State<Arc<Services>>,
    req: Ruma<login::v3::Request>,
) -> Result<login::v3::Response> {
    let LoginInfo::Password(password) = &req.body.login_info else {
        return Err(Error::bad_request("Unsupported login type"));
    };
    let users = &services.users;
    let name = login_name(req.json_body.as_ref())?;
    let invalid = || Error::forbidden("Invalid username or password");
    let user = users.user_id_from(name).map_err(|_| invalid())?;
    if users.is_deactivated(&user)? {
        return Err(Error::user_deactivated());
    }
    if !users.check_password(&user, &password.password)? {
        return Err(invalid());
    }
    let (token, device) = users.create_session(
        &user,
        req.body.device_id.as_deref(),
        req.body.initial_device_display_name.clone(),
    )?;
    services.storage.durable().await?;
    tracing::info!(user = %user, device = %device, "login");
    Ok(login::v3::Response::new(user, token, device))
}

/// `POST /_matrix/client/v3/logout`
async fn logout(
    State(services): State<Arc<Services>>,
    req: Ruma<logout::v3::Request>,
) -> Result<logout::v3::Response> {
    services.users.logout(req.session()?)?;
    services.storage.durable().await?;
    Ok(logout::v3::Response::new())
}

/// `POST /_matrix/client/v3/logout/all`
async fn logout_all(
    State(services): State<Arc<Services>>,
    req: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response> {
    services.users.logout_all(req.sender_user()?)?;
    services.storage.durable().await?;
    Ok(logout_all::v3::Response::new())
}
