//! Login and logout.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::client::{
    session::{
        get_login_types::{
            self,
            v3::{ApplicationServiceLoginType, LoginType, PasswordLoginType},
        },
        login::{
            self,
            v3::{LoginInfo, Password},
        },
        logout, logout_all,
    },
    uiaa::UserIdentifier,
};

use crate::{
    api::ruma::{RouterExt, Ruma},
    ratelimit::{Action, RateKey},
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
        LoginType::ApplicationService(ApplicationServiceLoginType::new()),
    ]))
}

/// The user a password login names: `identifier.user` (type `m.id.user`) or the legacy
/// top-level `user`.
#[allow(deprecated)]
fn login_name(password: &Password) -> Result<&str> {
    match &password.identifier {
        Some(UserIdentifier::Matrix(id)) => Ok(&id.user),
        Some(_) => Err(Error::bad_request("Unsupported identifier type")),
        None => password
            .user
            .as_deref()
            .ok_or_else(|| Error::missing_param("Missing user identifier")),
    }
}

/// `POST /_matrix/client/v3/login`
async fn login(
    State(services): State<Arc<Services>>,
    req: Ruma<login::v3::Request>,
) -> Result<login::v3::Response> {
    let password = match &req.body.login_info {
        LoginInfo::Password(password) => password,
        LoginInfo::ApplicationService(login) => {
            return appservice_login(&services, &req, login).await
        }
        _ => return Err(Error::bad_request("Unsupported login type")),
    };
    let users = &services.users;
    let name = login_name(password)?;
    services
        .rate_limits
        .check_ip(Action::Login, req.client_ip)?;
    let user = users.user_id_from(name).ok();
    if let Some(user) = &user {
        services
            .rate_limits
            .check(Action::LoginAccount, RateKey::User(user.clone()))?;
        if users.is_deactivated(user)? {
            return Err(Error::user_deactivated());
        }
    }
    let valid = users
        .check_password_off_thread(user.as_deref(), &password.password)
        .await?;
    let (Some(user), true) = (user, valid) else {
        return Err(Error::forbidden("Invalid username or password"));
    };
    let (token, device) = users
        .create_session(
            &user,
            req.body.device_id.as_deref(),
            req.body.initial_device_display_name.clone(),
        )
        .await?;
    tracing::info!(user = %user, device = %device, "login");
    Ok(login::v3::Response::new(user, token, device))
}

/// `POST /_matrix/client/v3/login` with `m.login.application_service`: an appservice (its
/// `as_token`) logs in one of its users, without a password.
#[allow(deprecated)]
async fn appservice_login(
    services: &Services,
    req: &Ruma<login::v3::Request>,
    login: &login::v3::ApplicationService,
) -> Result<login::v3::Response> {
    let reg = req
        .session
        .as_ref()
        .and_then(|s| s.appservice.as_deref())
        .and_then(|id| services.appservices.by_id(id))
        .ok_or_else(Error::missing_token)?;
    let name = match &login.identifier {
        Some(UserIdentifier::Matrix(id)) => id.user.as_str(),
        Some(_) => return Err(Error::bad_request("Unsupported identifier type")),
        None => login
            .user
            .as_deref()
            .ok_or_else(|| Error::missing_param("Missing user identifier"))?,
    };
    let users = &services.users;
    let user = users.user_id_from(name)?;
    if !reg.owns_user(user.as_str(), &services.config.server_name) {
        return Err(Error::forbidden(
            "The user is not in the application service's namespace",
        ));
    }
    if !users.exists(&user)? {
        return Err(Error::forbidden("Unknown user"));
    }
    let (token, device) = users
        .create_session(
            &user,
            req.body.device_id.as_deref(),
            req.body.initial_device_display_name.clone(),
        )
        .await?;
    tracing::info!(user = %user, device = %device, appservice = %reg.id, "appservice login");
    Ok(login::v3::Response::new(user, token, device))
}

/// `POST /_matrix/client/v3/logout`
async fn logout(
    State(services): State<Arc<Services>>,
    req: Ruma<logout::v3::Request>,
) -> Result<logout::v3::Response> {
    services.users.logout(req.session()?).await?;
    Ok(logout::v3::Response::new())
}

/// `POST /_matrix/client/v3/logout/all`
async fn logout_all(
    State(services): State<Arc<Services>>,
    req: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response> {
    services.users.logout_all(req.sender_user()?).await?;
    Ok(logout_all::v3::Response::new())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::{Request, StatusCode};
    use serde_json::{json, Value};
    use tower::ServiceExt;

    use crate::api::client::account::tests::{app, register_user};

    /// Clients that label JSON as a form still get their login and UIA parsed.
    #[tokio::test]
    async fn login_and_uia_without_json_content_type() {
        let app = app();
        register_user(&app, "alice").await;
        let send = |path: &str, body: Value| {
            let req = Request::builder()
                .method("POST")
                .uri(path)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(body.to_string()))
                .unwrap();
            app.clone().oneshot(req)
        };
        let login = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "pw" });
        assert_eq!(
            send("/_matrix/client/v3/login", login)
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        let register =
            json!({ "username": "bob", "password": "pw", "auth": { "type": "m.login.dummy" } });
        assert_eq!(
            send("/_matrix/client/v3/register", register)
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
}
