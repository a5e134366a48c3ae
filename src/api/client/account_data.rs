//! Client config: global and per-room account data, and room tags (kept as the room
//! account data `m.tag`).

use std::sync::Arc;

use axum::{extract::State, Json};
use ruma::{
    api::client::{
        config::{
            get_global_account_data, get_room_account_data, set_global_account_data,
            set_room_account_data,
        },
        tag::{create_tag, delete_tag, get_tags},
    },
    RoomId, UserId,
};
use serde_json::{json, Value};

use crate::{
    api::ruma::{RouterExt, RouterJsonExt, Ruma},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router
        .ruma_json(get_global_account_data)
        .ruma(set_global_account_data)
        .ruma_json(get_room_account_data)
        .ruma(set_room_account_data)
        .ruma_json(get_tags)
        .ruma(create_tag)
        .ruma(delete_tag)
}

/// Longest accepted tag name in bytes.
const MAX_TAG_LEN: usize = 255;

fn only_self<T>(req: &Ruma<T>, target: &UserId) -> Result<()> {
    if req.sender_user()? != target {
        return Err(Error::forbidden(
            "You cannot access another user's account data",
        ));
    }
    Ok(())
}

/// Account data the server manages itself cannot be set through this API.
fn settable(kind: &str) -> Result<()> {
    if matches!(kind, "m.fully_read" | "m.push_rules") {
        return Err(Error::bad_json_method(format!(
            "{kind} cannot be set through this API"
        )));
    }
    Ok(())
}

/// The content a client sent: the JSON body, or ruma's raw body when it was not
/// declared as JSON.
fn content_of<T>(req: &Ruma<T>, raw: &serde_json::value::RawValue) -> Result<Value> {
    let content = match &req.json_body {
        Some(v) => v.clone(),
        None => serde_json::from_str(raw.get())
            .map_err(|_| Error::not_json("Account data must be JSON"))?,
    };
    if !content.is_object() {
        return Err(Error::not_json("Account data must be a JSON object"));
    }
    Ok(content)
}

fn found(content: Option<Value>) -> Result<Json<Value>> {
    content
        .map(Json)
        .ok_or_else(|| Error::not_found("Account data not found"))
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
async fn get_global_account_data(
    State(services): State<Arc<Services>>,
    req: Ruma<get_global_account_data::v3::Request>,
) -> Result<Json<Value>> {
    only_self(&req, &req.body.user_id)?;
    found(services.users.get_account_data(
        &req.body.user_id,
        None,
        &req.body.event_type.to_string(),
    )?)
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
async fn set_global_account_data(
    State(services): State<Arc<Services>>,
    req: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response> {
    only_self(&req, &req.body.user_id)?;
    let kind = req.body.event_type.to_string();
    settable(&kind)?;
    services
        .users
        .set_account_data(
            &req.body.user_id,
            None,
            &kind,
            content_of(&req, req.body.data.json())?,
        )
        .await?;
    Ok(set_global_account_data::v3::Response::new())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
async fn get_room_account_data(
    State(services): State<Arc<Services>>,
    req: Ruma<get_room_account_data::v3::Request>,
) -> Result<Json<Value>> {
    only_self(&req, &req.body.user_id)?;
    let kind = req.body.event_type.to_string();
    found(
        services
            .users
            .get_account_data(&req.body.user_id, Some(&req.body.room_id), &kind)?,
    )
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
async fn set_room_account_data(
    State(services): State<Arc<Services>>,
    req: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response> {
    only_self(&req, &req.body.user_id)?;
    let kind = req.body.event_type.to_string();
    settable(&kind)?;
    services
        .users
        .set_account_data(
            &req.body.user_id,
            Some(&req.body.room_id),
            &kind,
            content_of(&req, req.body.data.json())?,
        )
        .await?;
    Ok(set_room_account_data::v3::Response::new())
}

/// The `tags` object of a room's `m.tag` account data.
fn tags_of(
    services: &Services,
    user: &UserId,
    room: &RoomId,
) -> Result<serde_json::Map<String, Value>> {
    Ok(services
        .users
        .get_account_data(user, Some(room), "m.tag")?
        .and_then(|c| c.get("tags").and_then(Value::as_object).cloned())
        .unwrap_or_default())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`
async fn get_tags(
    State(services): State<Arc<Services>>,
    req: Ruma<get_tags::v3::Request>,
) -> Result<Json<Value>> {
    only_self(&req, &req.body.user_id)?;
    Ok(Json(
        json!({ "tags": tags_of(&services, &req.body.user_id, &req.body.room_id)? }),
    ))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
async fn create_tag(
    State(services): State<Arc<Services>>,
    req: Ruma<create_tag::v3::Request>,
) -> Result<create_tag::v3::Response> {
    let (user, room) = (&req.body.user_id, &req.body.room_id);
    only_self(&req, user)?;
    if req.body.tag.is_empty() || req.body.tag.len() > MAX_TAG_LEN {
        return Err(Error::invalid_param("Invalid tag name"));
    }
    let info = match &req.json_body {
        Some(v @ Value::Object(_)) => v.clone(),
        _ => serde_json::to_value(&req.body.tag_info)?,
    };
    let mut tags = tags_of(&services, user, room)?;
    tags.insert(req.body.tag.clone(), info);
    services
        .users
        .set_account_data(user, Some(room), "m.tag", json!({ "tags": tags }))
        .await?;
    Ok(create_tag::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
async fn delete_tag(
    State(services): State<Arc<Services>>,
    req: Ruma<delete_tag::v3::Request>,
) -> Result<delete_tag::v3::Response> {
    let (user, room) = (&req.body.user_id, &req.body.room_id);
    only_self(&req, user)?;
    let mut tags = tags_of(&services, user, room)?;
    if tags.remove(&req.body.tag).is_some() {
        services
            .users
            .set_account_data(user, Some(room), "m.tag", json!({ "tags": tags }))
            .await?;
    }
    Ok(delete_tag::v3::Response::new())
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use serde_json::json;

    use crate::api::client::account::tests::{app, call, register_user};

    #[tokio::test]
    async fn global_account_data_is_missing_then_stored() {
        let app = app();
        let token = register_user(&app, "alice").await;
        let base = "/_matrix/client/v3/user/@alice:localhost";
        let (status, body) = call(
            &app,
            "GET",
            &format!("{base}/account_data/m.direct"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );
        let put = call(
            &app,
            "PUT",
            &format!("{base}/account_data/m.direct"),
            Some(&token),
            Some(json!({"@b:x": ["!r:x"]})),
        )
        .await;
        assert_eq!(put.0, StatusCode::OK, "{}", put.1);
        let (_, body) = call(
            &app,
            "GET",
            &format!("{base}/account_data/m.direct"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(body, json!({"@b:x": ["!r:x"]}));
    }

    #[tokio::test]
    async fn server_managed_types_and_other_users_data_are_refused() {
        let app = app();
        let token = register_user(&app, "alice").await;
        let base = "/_matrix/client/v3/user/@alice:localhost";
        let (status, body) = call(
            &app,
            "PUT",
            &format!("{base}/rooms/!r:localhost/account_data/m.fully_read"),
            Some(&token),
            Some(json!({"event_id": "$e"})),
        )
        .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("M_BAD_JSON"))
        );
        let (status, _) = call(
            &app,
            "PUT",
            &format!("{base}/account_data/m.push_rules"),
            Some(&token),
            Some(json!({})),
        )
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let (status, _) = call(
            &app,
            "GET",
            "/_matrix/client/v3/user/@bob:localhost/account_data/m.direct",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn tags_are_set_listed_and_deleted() {
        let app = app();
        let token = register_user(&app, "alice").await;
        let base = "/_matrix/client/v3/user/@alice:localhost";
        let tags = format!("{base}/rooms/!r:localhost/tags");
        assert_eq!(
            call(
                &app,
                "PUT",
                &format!("{tags}/m.favourite"),
                Some(&token),
                Some(json!({"order": 0.5}))
            )
            .await
            .0,
            StatusCode::OK
        );
        assert_eq!(
            call(
                &app,
                "PUT",
                &format!("{tags}/u.work"),
                Some(&token),
                Some(json!({}))
            )
            .await
            .0,
            StatusCode::OK
        );
        let (_, body) = call(&app, "GET", &tags, Some(&token), None).await;
        assert_eq!(
            body,
            json!({"tags": {"m.favourite": {"order": 0.5}, "u.work": {}}})
        );
        assert_eq!(
            call(
                &app,
                "DELETE",
                &format!("{tags}/u.work"),
                Some(&token),
                None
            )
            .await
            .0,
            StatusCode::OK
        );
        let (_, body) = call(
            &app,
            "GET",
            &format!("{base}/rooms/!r:localhost/account_data/m.tag"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(body, json!({"tags": {"m.favourite": {"order": 0.5}}}));
    }

    #[tokio::test]
    async fn profile_presence_filters_devices() {
        let app = app();
        let token = register_user(&app, "alice").await;
        let bob = register_user(&app, "bob").await;
        let (_, body) = call(
            &app,
            "GET",
            "/_matrix/client/v3/profile/@alice:localhost",
            None,
            None,
        )
        .await;
        assert_eq!(body, json!({"displayname": "alice"}));
        let (status, body) = call(
            &app,
            "GET",
            "/_matrix/client/v3/profile/@nobody:localhost",
            None,
            None,
        )
        .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );
        let url = "/_matrix/client/v3/profile/@alice:localhost/displayname";
        assert_eq!(
            call(
                &app,
                "PUT",
                url,
                Some(&token),
                Some(json!({"displayname": "Alice"}))
            )
            .await
            .0,
            StatusCode::OK
        );
        assert_eq!(
            call(
                &app,
                "PUT",
                url,
                Some(&bob),
                Some(json!({"displayname": "X"}))
            )
            .await
            .0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&app, "GET", url, None, None).await.1,
            json!({"displayname": "Alice"})
        );
        let avatar = "/_matrix/client/v3/profile/@alice:localhost/avatar_url";
        assert_eq!(
            call(
                &app,
                "PUT",
                avatar,
                Some(&token),
                Some(json!({"avatar_url": "mxc://localhost/a"}))
            )
            .await
            .0,
            StatusCode::OK
        );
        assert_eq!(
            call(&app, "GET", avatar, None, None).await.1,
            json!({"avatar_url": "mxc://localhost/a"})
        );

        let presence = "/_matrix/client/v3/presence/@alice:localhost/status";
        assert_eq!(
            call(&app, "GET", presence, Some(&bob), None).await.1["presence"],
            "offline"
        );
        assert_eq!(
            call(
                &app,
                "PUT",
                presence,
                Some(&token),
                Some(json!({"presence": "online", "status_msg": "hi"}))
            )
            .await
            .0,
            StatusCode::OK
        );
        assert_eq!(
            call(
                &app,
                "PUT",
                presence,
                Some(&bob),
                Some(json!({"presence": "online"}))
            )
            .await
            .0,
            StatusCode::FORBIDDEN
        );
        let (_, body) = call(&app, "GET", presence, Some(&bob), None).await;
        assert_eq!(
            (body["presence"].as_str(), body["status_msg"].as_str()),
            (Some("online"), Some("hi"))
        );

        let filter = json!({"room": {"timeline": {"limit": 5}}});
        let (status, body) = call(
            &app,
            "POST",
            "/_matrix/client/v3/user/@alice:localhost/filter",
            Some(&token),
            Some(filter.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = body["filter_id"].as_str().unwrap();
        let path = format!("/_matrix/client/v3/user/@alice:localhost/filter/{id}");
        assert_eq!(call(&app, "GET", &path, Some(&token), None).await.1, filter);
        assert_eq!(
            call(&app, "GET", &path, Some(&bob), None).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(
                &app,
                "GET",
                "/_matrix/client/v3/user/@alice:localhost/filter/zz",
                Some(&token),
                None
            )
            .await
            .0,
            StatusCode::NOT_FOUND
        );

        let (_, body) = call(
            &app,
            "GET",
            "/_matrix/client/v3/devices",
            Some(&token),
            None,
        )
        .await;
        let device = body["devices"][0]["device_id"].as_str().unwrap().to_owned();
        let path = format!("/_matrix/client/v3/devices/{device}");
        assert_eq!(
            call(
                &app,
                "PUT",
                &path,
                Some(&token),
                Some(json!({"display_name": "phone"}))
            )
            .await
            .0,
            StatusCode::OK
        );
        assert_eq!(
            call(&app, "GET", &path, Some(&token), None).await.1["display_name"],
            "phone"
        );
        assert_eq!(
            call(
                &app,
                "GET",
                "/_matrix/client/v3/devices/NOPE",
                Some(&token),
                None
            )
            .await
            .0,
            StatusCode::NOT_FOUND
        );
        let (status, body) = call(&app, "DELETE", &path, Some(&token), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw", "session": body["session"]});
        assert_eq!(
            call(
                &app,
                "DELETE",
                &path,
                Some(&token),
                Some(json!({"auth": auth}))
            )
            .await
            .0,
            StatusCode::OK
        );
        assert_eq!(
            call(
                &app,
                "GET",
                "/_matrix/client/v3/devices",
                Some(&token),
                None
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );

        let (status, body) = call(
            &app,
            "GET",
            "/_matrix/client/v3/pushrules/",
            Some(&bob),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(body["global"]["override"].is_array());
    }
}
