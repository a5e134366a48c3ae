//! Profiles: display name and avatar URL.

use std::sync::Arc;

use axum::{extract::State, Json};
use ruma::{
    api::client::profile::{
        get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name,
    },
    UserId,
};
use serde_json::{json, Value};

use crate::{
    accounts::ProfileChange,
    api::ruma::{RouterExt, RouterJsonExt, Ruma},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router
        .ruma_json(get_profile)
        .ruma_json(get_display_name)
        .ruma_json(get_avatar_url)
        .ruma(set_display_name)
        .ruma(set_avatar_url)
}

/// Gives an appservice whose namespace holds an unknown `user` the chance to create it.
async fn ask_appservices(services: &Services, user: &UserId) -> Result<()> {
    if !services.users.exists(user)? {
        services.appservices.query_user(user).await;
    }
    Ok(())
}

/// The profile of a known user as JSON, unset fields omitted; `M_NOT_FOUND` otherwise.
fn profile_json(services: &Services, user: &UserId) -> Result<Value> {
    if !services.users.exists(user)? {
        return Err(Error::not_found("Profile not found"));
    }
    let (displayname, avatar_url) = services.users.profile(user)?;
    let mut body = json!({});
    if let Some(d) = displayname {
        body["displayname"] = json!(d);
    }
    if let Some(a) = avatar_url {
        body["avatar_url"] = json!(a);
    }
    // Extended profiles: the personal meeting room's link (see `meetings`).
    if let Some(link) = services.meetings.personal_link(user)? {
        body[crate::meetings::MEETING_LINK_FIELD] = json!(link);
    }
    Ok(body)
}

fn only_self<T>(req: &Ruma<T>, target: &UserId) -> Result<()> {
    if req.sender_user()? != target {
        return Err(Error::forbidden("You cannot change another user's profile"));
    }
    Ok(())
}

/// `GET /_matrix/client/v3/profile/{userId}`
async fn get_profile(
    State(services): State<Arc<Services>>,
    req: Ruma<get_profile::v3::Request>,
) -> Result<Json<Value>> {
    ask_appservices(&services, &req.body.user_id).await?;
    Ok(Json(profile_json(&services, &req.body.user_id)?))
}

/// `GET /_matrix/client/v3/profile/{userId}/displayname`
async fn get_display_name(
    State(services): State<Arc<Services>>,
    req: Ruma<get_display_name::v3::Request>,
) -> Result<Json<Value>> {
    ask_appservices(&services, &req.body.user_id).await?;
    let profile = profile_json(&services, &req.body.user_id)?;
    Ok(Json(profile.get("displayname").map_or_else(
        || json!({}),
        |d| json!({ "displayname": d }),
    )))
}

/// `GET /_matrix/client/v3/profile/{userId}/avatar_url`
async fn get_avatar_url(
    State(services): State<Arc<Services>>,
    req: Ruma<get_avatar_url::v3::Request>,
) -> Result<Json<Value>> {
    ask_appservices(&services, &req.body.user_id).await?;
    let profile = profile_json(&services, &req.body.user_id)?;
    Ok(Json(
        profile
            .get("avatar_url")
            .map_or_else(|| json!({}), |a| json!({ "avatar_url": a })),
    ))
}

/// `PUT /_matrix/client/v3/profile/{userId}/displayname`
async fn set_display_name(
    State(services): State<Arc<Services>>,
    req: Ruma<set_display_name::v3::Request>,
) -> Result<set_display_name::v3::Response> {
    let user = &req.body.user_id;
    only_self(&req, user)?;
    let change = ProfileChange {
        displayname: Some(req.body.displayname.clone()),
        ..ProfileChange::default()
    };
    services.accounts.set_profile(user, change).await?;
    Ok(set_display_name::v3::Response::new())
}

/// `PUT /_matrix/client/v3/profile/{userId}/avatar_url`
async fn set_avatar_url(
    State(services): State<Arc<Services>>,
    req: Ruma<set_avatar_url::v3::Request>,
) -> Result<set_avatar_url::v3::Response> {
    let user = &req.body.user_id;
    only_self(&req, user)?;
    let change = ProfileChange {
        avatar_url: Some(req.body.avatar_url.as_ref().map(ToString::to_string)),
        ..ProfileChange::default()
    };
    services.accounts.set_profile(user, change).await?;
    Ok(set_avatar_url::v3::Response::new())
}
