//! Account management: registration, username availability, registration tokens,
//! `whoami`, password change, deactivation, third-party ids.

use std::sync::Arc;

use axum::{extract::State, Json};
use rand::{distributions::Alphanumeric, Rng};
use ruma::api::client::{
    account::{
        change_password, check_registration_token_validity, deactivate, get_3pids,
        get_username_availability,
        register::{self, RegistrationKind},
        whoami, ThirdPartyIdRemovalStatus,
    },
    uiaa::AuthData,
};
use serde_json::{json, Value};

use crate::{
    accounts::KeepSessions,
    api::ruma::{RouterExt, RouterJsonExt, Ruma},
    config::RegistrationMode,
    ratelimit::Action,
    services::Services,
    users::{check_password_policy, Stage, UiaFlows},
    Error, Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router
        .ruma(register)
        .ruma(get_username_availability)
        .ruma(check_registration_token_validity)
        .ruma(whoami)
        .ruma(change_password)
        .ruma(deactivate)
        .ruma_json(get_3pids)
}

/// The `auth` object of a UIA request: as the client sent it, or re-serialised from
/// ruma's parse when the body was not declared as JSON.
pub(super) fn auth_json(json_body: Option<&Value>, typed: Option<&AuthData>) -> Option<Value> {
    match json_body {
        Some(body) => body.get("auth").cloned(),
        None => typed.and_then(|a| serde_json::to_value(a).ok()),
    }
}

fn generated_localpart() -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(10)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect();
    format!("user-{suffix}")
}

/// `POST /_matrix/client/v3/register`
async fn register(
    State(services): State<Arc<Services>>,
    req: Ruma<register::v3::Request>,
) -> Result<register::v3::Response> {
    if !req.session.as_ref().is_some_and(|s| s.rate_limit_exempt) {
        services
            .rate_limits
            .check_ip(Action::Register, req.client_ip)?;
    }
    let users = &services.users;
    let body = &req.body;
    let settings = &services.config.registration;
    let guest = match body.kind {
        RegistrationKind::Guest => true,
        RegistrationKind::User => false,
        _ => return Err(Error::invalid_param("kind must be `user` or `guest`")),
    };
    // Checked before anything is created, so a refused device leaves no account behind.
    crate::users::check_new_device(
        body.device_id.as_deref(),
        body.initial_device_display_name.as_deref(),
    )?;
    let appservice = req.session.as_ref().and_then(|s| s.appservice.as_deref());
    let user = if body.login_type == Some(register::LoginType::ApplicationService) {
        // An appservice registers a user of its namespace: no UIA, no password.
        let Some(id) = appservice else {
            return Err(Error::missing_token());
        };
        let reg = services
            .appservices
            .by_id(id)
            .ok_or_else(Error::unknown_token)?;
        let localpart = body
            .username
            .as_deref()
            .ok_or_else(|| Error::missing_param("username is required"))?;
        crate::users::validate_localpart(localpart, &services.config.server_name)?;
        let user = users.user_id_from(localpart)?;
        if !reg.owns_user(user.as_str(), &services.config.server_name) {
            return Err(Error::matrix(
                crate::ErrorKind::Invalid,
                "M_EXCLUSIVE",
                "The user id is not in the application service's namespace",
            ));
        }
        services.appservices.check_exclusive(
            myelin_appservice::NamespaceKind::Users,
            user.as_str(),
            Some(id),
        )?;
        if users.exists(&user)? {
            return Err(Error::user_in_use());
        }
        services
            .accounts
            .create(user.localpart(), None, false, None)
            .await?
    } else if appservice.is_some() {
        return Err(Error::bad_request(
            "An application service registers with type m.login.application_service",
        ));
    } else if guest {
        // External guests (meetings.allow_external_guests) register to join by link.
        if !settings.allow_guests && !services.config.meetings.allow_external_guests {
            return Err(Error::guest_access_forbidden(
                "Guest registration is disabled",
            ));
        }
        services.accounts.create_guest().await?
    } else {
        let flows = match settings.mode {
            RegistrationMode::Closed => {
                return Err(Error::forbidden("Registration is disabled on this server"))
            }
            RegistrationMode::Open => UiaFlows::single(Stage::Dummy),
            RegistrationMode::Token => UiaFlows::single(Stage::RegistrationToken),
        };
        // Refuse a bad or taken name before asking for auth.
        let localpart = match &body.username {
            Some(name) => name.clone(),
            None => generated_localpart(),
        };
        let wanted = users.check_available(&localpart)?;
        services.appservices.check_exclusive(
            myelin_appservice::NamespaceKind::Users,
            wanted.as_str(),
            None,
        )?;
        if let Some(password) = &body.password {
            check_password_policy(password)?;
        }
        let token = users.check_registration_uia(
            &flows,
            auth_json(req.json_body.as_ref(), req.body.auth.as_ref()).as_ref(),
        )?;
        let password = body
            .password
            .as_deref()
            .ok_or_else(|| Error::missing_param("password is required"))?;
        // The token's use is counted before the account is written and given back if
        // that fails, so a token allowed once makes one account.
        if let Some(token) = &token {
            users.use_registration_token(token)?;
        }
        let created = services
            .accounts
            .create(&localpart, Some(password), false, None)
            .await;
        match (created, &token) {
            (Ok(user), _) => user,
            (Err(e), Some(token)) => {
                users.release_registration_token(token)?;
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        }
    };

    let mut response = register::v3::Response::new(user.clone());
    if !body.inhibit_login {
        let (token, device) = users
            .create_session(
                &user,
                body.device_id.as_deref(),
                body.initial_device_display_name.clone(),
            )
            .await?;
        response.access_token = Some(token);
        response.device_id = Some(device);
    }
    Ok(response)
}

/// `GET /_matrix/client/v3/register/available`
async fn get_username_availability(
    State(services): State<Arc<Services>>,
    req: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response> {
    services.users.check_available(&req.body.username)?;
    Ok(get_username_availability::v3::Response::new(true))
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`
async fn check_registration_token_validity(
    State(services): State<Arc<Services>>,
    req: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<check_registration_token_validity::v1::Response> {
    if services.config.registration.mode != RegistrationMode::Token {
        return Err(Error::forbidden(
            "Registration tokens are not used on this server",
        ));
    }
    let valid = services.users.registration_token_valid(&req.body.token)?;
    Ok(check_registration_token_validity::v1::Response::new(valid))
}

/// `GET /_matrix/client/v3/account/whoami`
async fn whoami(
    State(_services): State<Arc<Services>>,
    req: Ruma<whoami::v3::Request>,
) -> Result<whoami::v3::Response> {
    let session = req.session()?;
    let mut response = whoami::v3::Response::new(session.user_id.clone(), session.is_guest);
    response.device_id = Some(session.device_id.clone());
    Ok(response)
}

/// `POST /_matrix/client/v3/account/password`
async fn change_password(
    State(services): State<Arc<Services>>,
    req: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    let session = req.session()?;
    let users = &services.users;
    check_password_policy(&req.body.new_password)?;
    users.check_uia(
        &UiaFlows::single(Stage::Password),
        Some(&session.user_id),
        auth_json(req.json_body.as_ref(), req.body.auth.as_ref()).as_ref(),
    )?;
    let keep = if req.body.logout_devices {
        KeepSessions::Only(&session.device_id)
    } else {
        KeepSessions::All
    };
    services
        .accounts
        .change_password(&session.user_id, &req.body.new_password, keep)
        .await?;
    Ok(change_password::v3::Response::new())
}

/// `POST /_matrix/client/v3/account/deactivate`
async fn deactivate(
    State(services): State<Arc<Services>>,
    req: Ruma<deactivate::v3::Request>,
) -> Result<deactivate::v3::Response> {
    let session = req.session()?;
    let user = &session.user_id;
    services.users.check_uia(
        &UiaFlows::single(Stage::Password),
        Some(user),
        auth_json(req.json_body.as_ref(), req.body.auth.as_ref()).as_ref(),
    )?;
    services.accounts.deactivate(user, false).await?;
    Ok(deactivate::v3::Response::new(
        ThirdPartyIdRemovalStatus::Success,
    ))
}

/// `GET /_matrix/client/v3/account/3pid`: Myelin binds no third-party ids.
async fn get_3pids(
    State(_services): State<Arc<Services>>,
    req: Ruma<get_3pids::v3::Request>,
) -> Result<Json<Value>> {
    req.session()?;
    Ok(Json(json!({ "threepids": [] })))
}

#[cfg(test)]
pub(super) mod tests {
    use axum::body::Body;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use crate::config::Config;

    /// A router on in-memory storage with open registration.
    pub(crate) fn app() -> axum::Router {
        let mut config = Config::default();
        config.registration.mode = RegistrationMode::Open;
        config.registration.allow_guests = true;
        crate::api::router(Services::in_memory(config).unwrap())
    }

    /// Sends one request and returns the status and JSON body.
    pub(crate) async fn call(
        app: &axum::Router,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let res = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Registers `name` with password `pw` and returns the access token.
    pub(crate) async fn register_user(app: &axum::Router, name: &str) -> String {
        let (status, body) = call(
            app,
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(
                json!({ "username": name, "password": "pw", "auth": { "type": "m.login.dummy" } }),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn register_uia_login_whoami() {
        let app = app();
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({ "username": "alice", "password": "pw" })),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["flows"], json!([{ "stages": ["m.login.dummy"] }]));
        let session = body["session"].as_str().unwrap();
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/r0/register",
            None,
            Some(json!({ "username": "alice", "password": "pw", "auth": { "type": "m.login.dummy", "session": session } })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["user_id"], "@alice:localhost");

        let (status, body) = call(
            &app,
            "GET",
            "/_matrix/client/v3/register/available?username=alice",
            None,
            None,
        )
        .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("M_USER_IN_USE"))
        );
        let (_, body) = call(
            &app,
            "GET",
            "/_matrix/client/v3/register/available?username=Bad!",
            None,
            None,
        )
        .await;
        assert_eq!(body["errcode"], "M_INVALID_USERNAME");

        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/login",
            None,
            Some(json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "bad" })),
        )
        .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/login",
            None,
            Some(json!({ "type": "m.login.password", "user": "@alice:localhost", "password": "pw", "device_id": "DEV" })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["device_id"], "DEV");
        let token = body["access_token"].as_str().unwrap().to_owned();
        let (status, body) = call(
            &app,
            "GET",
            "/_matrix/client/v3/account/whoami",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({ "user_id": "@alice:localhost", "device_id": "DEV" }),
            "is_guest omitted when false"
        );

        let (status, _) = call(
            &app,
            "POST",
            "/_matrix/client/v3/logout",
            Some(&token),
            Some(json!({})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = call(
            &app,
            "GET",
            "/_matrix/client/v3/account/whoami",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN"))
        );
    }

    #[tokio::test]
    async fn closed_registration_and_guests() {
        let mut config = Config::default();
        config.meetings.allow_external_guests = false;
        let closed = crate::api::router(Services::in_memory(config).unwrap());
        let (status, body) = call(
            &closed,
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({ "username": "a", "password": "pw" })),
        )
        .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );
        let (_, body) = call(
            &closed,
            "POST",
            "/_matrix/client/v3/register?kind=guest",
            None,
            Some(json!({})),
        )
        .await;
        assert_eq!(body["errcode"], "M_GUEST_ACCESS_FORBIDDEN");

        let app = app();
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/register?kind=guest",
            None,
            Some(json!({})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let token = body["access_token"].as_str().unwrap();
        let (_, body) = call(
            &app,
            "GET",
            "/_matrix/client/v3/account/whoami",
            Some(token),
            None,
        )
        .await;
        assert_eq!(body["is_guest"], true);
    }

    #[tokio::test]
    async fn password_change_and_deactivation() {
        let app = app();
        let token = register_user(&app, "bob").await;
        let other = {
            let (_, body) = call(
                &app,
                "POST",
                "/_matrix/client/v3/login",
                None,
                Some(json!({ "type": "m.login.password", "user": "bob", "password": "pw" })),
            )
            .await;
            body["access_token"].as_str().unwrap().to_owned()
        };
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/account/password",
            Some(&token),
            Some(json!({ "new_password": "pw2" })),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["flows"], json!([{ "stages": ["m.login.password"] }]));
        let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": "pw", "session": body["session"] });
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/account/password",
            Some(&token),
            Some(json!({ "new_password": "pw2", "auth": auth })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            call(
                &app,
                "GET",
                "/_matrix/client/v3/account/whoami",
                Some(&other),
                None
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(
                &app,
                "GET",
                "/_matrix/client/v3/account/whoami",
                Some(&token),
                None
            )
            .await
            .0,
            StatusCode::OK
        );

        let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": "pw2" });
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/account/deactivate",
            Some(&token),
            Some(json!({ "auth": auth })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["id_server_unbind_result"], "success");
        assert_eq!(
            call(
                &app,
                "GET",
                "/_matrix/client/v3/account/whoami",
                Some(&token),
                None
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );
        let (status, body) = call(&app, "POST", "/_matrix/client/v3/login", None, Some(json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": "pw2" }))).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_USER_DEACTIVATED"))
        );
    }
}
