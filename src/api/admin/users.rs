//! Admin API, users: list, get, create or modify, deactivate, reset password, whois, the
//! admin flag, joined rooms and devices (Synapse's `/_synapse/admin/v1|v2/users...`
//! shapes), plus the client-server `GET /_matrix/client/v3/admin/whois/{userId}`.

use std::sync::Arc;

use axum::{
    extract::State,
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use ruma::{api::client::admin::get_user_info, UserId};
use serde_json::{json, Value};

use super::{AdminRequest, Caller};
use crate::{
    accounts::{AccountChanges, KeepSessions, ProfileChange},
    api::ruma::{RouterJsonExt, Ruma},
    services::Services,
    users::{check_password_policy, check_profile, AccountOrder, AccountQuery, AccountSummary},
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .route("/_synapse/admin/v2/users", get(list_users))
        .route(
            "/_synapse/admin/v2/users/{user_id}",
            get(get_user).put(put_user),
        )
        .route("/_synapse/admin/v1/deactivate/{user_id}", post(deactivate))
        .route(
            "/_synapse/admin/v1/reset_password/{user_id}",
            post(reset_password),
        )
        .route("/_synapse/admin/v1/whois/{user_id}", get(whois))
        .route(
            "/_synapse/admin/v1/users/{user_id}/admin",
            get(get_admin).put(put_admin),
        )
        .route(
            "/_synapse/admin/v1/users/{user_id}/joined_rooms",
            get(joined_rooms),
        )
        .route("/_synapse/admin/v2/users/{user_id}/devices", get(devices))
        .ruma_json(client_whois)
}

fn user_json(s: &AccountSummary) -> Value {
    json!({
        "name": s.user_id,
        "displayname": s.displayname,
        "avatar_url": s.avatar_url,
        "is_guest": s.account.guest,
        "admin": s.account.admin,
        "deactivated": s.account.deactivated,
        "erased": s.account.erased,
        "shadow_banned": false,
        "locked": false,
        "approved": true,
        "user_type": null,
        "appservice_id": null,
        "creation_ts": s.account.created_ts,
        "last_seen_ts": s.last_seen_ts,
        "threepids": [],
        "external_ids": [],
    })
}

fn summary(services: &Services, user: &UserId) -> Result<AccountSummary> {
    services
        .users
        .account_summary(user)?
        .ok_or_else(|| Error::not_found("User not found"))
}

/// `GET /_synapse/admin/v2/users`
async fn list_users(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let query = AccountQuery {
        name: [req.query("name"), req.query("user_id")]
            .into_iter()
            .flatten()
            .find(|n| !n.is_empty())
            .map(str::to_owned),
        guests: req.query_bool("guests", true)?,
        deactivated: req.query_bool("deactivated", false)?,
        order: req
            .query("order_by")
            .map(AccountOrder::parse)
            .transpose()?
            .unwrap_or_default(),
        backwards: req.backwards()?,
    };
    let accounts = services.users.list_accounts(&query)?;
    let total = accounts.len();
    let (page, next) = req.page(accounts)?;
    let mut body = json!({
        "users": page.iter().map(user_json).collect::<Vec<_>>(),
        "total": total,
    });
    if let Some(next) = next {
        body["next_token"] = json!(next.to_string());
    }
    Ok(Json(body))
}

/// `GET /_synapse/admin/v2/users/{userId}`
async fn get_user(State(services): State<Arc<Services>>, req: AdminRequest) -> Result<Json<Value>> {
    let user = req.local_user(&services, 0)?;
    Ok(Json(user_json(&summary(&services, &user)?)))
}

/// The fields of `PUT /_synapse/admin/v2/users/{userId}`, type-checked.
struct UserChanges<'a> {
    password: Option<&'a str>,
    logout_devices: bool,
    displayname: Option<&'a str>,
    avatar_url: Option<&'a str>,
    admin: Option<bool>,
    deactivated: Option<bool>,
}

impl<'a> UserChanges<'a> {
    /// Reads and checks every field, so that a refusal comes before any write.
    fn parse(req: &'a AdminRequest) -> Result<UserChanges<'a>> {
        let changes = UserChanges {
            password: req.body_str("password")?,
            logout_devices: req.body_bool("logout_devices")?.unwrap_or(true),
            displayname: req.body_str("displayname")?,
            avatar_url: req.body_str("avatar_url")?,
            admin: req.body_bool("admin")?,
            deactivated: req.body_bool("deactivated")?,
        };
        if let Some(password) = changes.password {
            check_password_policy(password)?;
        }
        check_profile(changes.displayname, changes.avatar_url)?;
        // Myelin binds no third-party or external ids: asking for some is refused rather
        // than silently dropped (synapse-admin sends empty lists).
        for field in ["threepids", "external_ids"] {
            match req.body.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::Array(list)) if list.is_empty() => {}
                Some(_) => {
                    return Err(Error::invalid_param(format!(
                        "{field} are not supported by this server"
                    )))
                }
            }
        }
        Ok(changes)
    }

    /// The checked changes, for the accounts service.
    fn owned(&self) -> AccountChanges {
        AccountChanges {
            password: self.password.map(str::to_owned),
            logout_devices: self.logout_devices,
            profile: ProfileChange {
                displayname: self.displayname.map(|d| Some(d.to_owned())),
                avatar_url: self.avatar_url.map(|a| Some(a.to_owned())),
            },
            admin: self.admin,
            deactivated: self.deactivated,
        }
    }
}

/// `PUT /_synapse/admin/v2/users/{userId}`: creates the account (201) or changes it
/// (200). Every field is checked before anything is written.
async fn put_user(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<(StatusCode, Json<Value>)> {
    let user = req.local_user(&services, 0)?;
    let changes = UserChanges::parse(&req)?;
    if changes.admin == Some(false) && req.caller.user() == Some(&*user) {
        return Err(Error::bad_request("You may not demote yourself"));
    }
    let status = if services.users.account(&user)?.is_none() {
        services
            .accounts
            .admin_create(&user, changes.owned())
            .await?;
        StatusCode::CREATED
    } else {
        services
            .accounts
            .admin_change(&user, changes.owned())
            .await?;
        StatusCode::OK
    };
    Ok((status, Json(user_json(&summary(&services, &user)?))))
}

/// `POST /_synapse/admin/v1/deactivate/{userId}`
async fn deactivate(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let user = req.local_user(&services, 0)?;
    let erase = req.body_bool("erase")?.unwrap_or(false);
    if !services.users.exists(&user)? {
        return Err(Error::not_found("User not found"));
    }
    services.accounts.deactivate(&user, erase).await?;
    Ok(Json(json!({ "id_server_unbind_result": "success" })))
}

/// `POST /_synapse/admin/v1/reset_password/{userId}`
async fn reset_password(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let user = req.local_user(&services, 0)?;
    let password = req
        .body_str("new_password")?
        .ok_or_else(|| Error::missing_param("new_password is required"))?;
    let logout_devices = req.body_bool("logout_devices")?.unwrap_or(true);
    check_password_policy(password)?;
    let keep = if logout_devices {
        KeepSessions::None
    } else {
        KeepSessions::All
    };
    services
        .accounts
        .change_password(&user, password, keep)
        .await?;
    Ok(Json(json!({})))
}

/// The whois answer: every device with its last seen address and time.
fn whois_json(services: &Services, user: &UserId) -> Result<Value> {
    if !services.users.exists(user)? {
        return Err(Error::not_found("User not found"));
    }
    let mut devices = serde_json::Map::new();
    for device in services.users.list_devices(user)? {
        let connection = json!({
            "ip": device.last_seen_ip,
            "last_seen": device.last_seen_ts,
            "user_agent": null,
        });
        devices.insert(
            device.device_id.to_string(),
            json!({ "sessions": [{ "connections": [connection] }] }),
        );
    }
    Ok(json!({ "user_id": user, "devices": devices }))
}

/// `GET /_synapse/admin/v1/whois/{userId}`
async fn whois(State(services): State<Arc<Services>>, req: AdminRequest) -> Result<Json<Value>> {
    let user = req.local_user(&services, 0)?;
    Ok(Json(whois_json(&services, &user)?))
}

/// `GET /_matrix/client/v3/admin/whois/{userId}`: administrators may look anyone up,
/// other users only themselves.
async fn client_whois(
    State(services): State<Arc<Services>>,
    req: Ruma<get_user_info::v3::Request>,
) -> Result<Json<Value>> {
    let caller = req.sender_user()?;
    let user = &req.body.user_id;
    if caller != user && !services.users.is_admin(caller)? {
        return Err(Error::forbidden("You are not a server admin"));
    }
    if user.server_name().as_str() != services.users.server_name() {
        return Err(Error::invalid_param("Can only handle local users"));
    }
    Ok(Json(whois_json(&services, user)?))
}

/// `GET /_synapse/admin/v1/users/{userId}/admin`
async fn get_admin(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let user = req.local_user(&services, 0)?;
    Ok(Json(
        json!({ "admin": summary(&services, &user)?.account.admin }),
    ))
}

/// `PUT /_synapse/admin/v1/users/{userId}/admin`
async fn put_admin(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let user = req.local_user(&services, 0)?;
    let admin = req
        .body_bool("admin")?
        .ok_or_else(|| Error::missing_param("admin is required"))?;
    if !admin && matches!(&req.caller, Caller::Admin(me) if *me == user) {
        return Err(Error::bad_request("You may not demote yourself"));
    }
    services.accounts.set_admin(&user, admin).await?;
    Ok(Json(json!({})))
}

/// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`
async fn joined_rooms(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let user = req.local_user(&services, 0)?;
    summary(&services, &user)?;
    let rooms = services.rooms.joined_rooms(&user)?;
    Ok(Json(json!({ "total": rooms.len(), "joined_rooms": rooms })))
}

/// `GET /_synapse/admin/v2/users/{userId}/devices`
async fn devices(State(services): State<Arc<Services>>, req: AdminRequest) -> Result<Json<Value>> {
    let user = req.local_user(&services, 0)?;
    summary(&services, &user)?;
    let devices: Vec<Value> = services
        .users
        .list_devices(&user)?
        .into_iter()
        .map(|d| {
            json!({
                "user_id": user,
                "device_id": d.device_id,
                "display_name": d.display_name,
                "last_seen_ip": d.last_seen_ip,
                "last_seen_ts": d.last_seen_ts,
            })
        })
        .collect();
    Ok(Json(json!({ "total": devices.len(), "devices": devices })))
}
