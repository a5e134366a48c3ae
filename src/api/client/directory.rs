//! Room aliases and the public room directory.

use std::sync::Arc;

use axum::{extract::State, Json, Router};
use ruma::{
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        directory::{
            get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
        },
        room::{aliases, Visibility},
    },
    directory::PublicRoomsChunk,
    UInt,
};
use serde_json::{json, Value};

use crate::{
    api::ruma::{RouterExt, RouterJsonExt, Ruma},
    rooms::Membership,
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .ruma(create_alias_route)
        .ruma(get_alias_route)
        .ruma(delete_alias_route)
        .ruma(room_aliases_route)
        .ruma(public_rooms_route)
        .ruma(public_rooms_filtered_route)
        .ruma(get_visibility_route)
        .ruma(set_visibility_route)
        .ruma_json(room_summary)
}

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`
async fn create_alias_route(
    State(services): State<Arc<Services>>,
    req: Ruma<create_alias::v3::Request>,
) -> Result<create_alias::v3::Response> {
    let user = req.sender_user()?;
    let b = &req.body;
    services.appservices.check_exclusive(
        myelin_appservice::NamespaceKind::Aliases,
        b.room_alias.as_str(),
        req.session()?.appservice.as_deref(),
    )?;
    if services.rooms.membership(&b.room_id, user)? != Some(Membership::Join) {
        return Err(Error::forbidden("You are not joined to this room"));
    }
    services.rooms.put_alias(&b.room_alias, &b.room_id, user)?;
    Ok(create_alias::v3::Response::new())
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`
async fn get_alias_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_alias::v3::Request>,
) -> Result<get_alias::v3::Response> {
    let alias = &req.body.room_alias;
    let mut room_id = services.rooms.resolve_alias(alias)?;
    // An alias inside an appservice's namespace: it may create the room now.
    if room_id.is_none() && services.appservices.query_alias(alias).await {
        room_id = services.rooms.resolve_alias(alias)?;
    }
    let room_id = room_id.ok_or_else(|| Error::not_found("Room alias not found"))?;
    Ok(get_alias::v3::Response::new(
        room_id,
        vec![services.rooms.server_name().to_owned()],
    ))
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`
async fn delete_alias_route(
    State(services): State<Arc<Services>>,
    req: Ruma<delete_alias::v3::Request>,
) -> Result<delete_alias::v3::Response> {
    services
        .rooms
        .remove_alias(&req.body.room_alias, req.sender_user()?)
        .await?;
    Ok(delete_alias::v3::Response::new())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`
async fn room_aliases_route(
    State(services): State<Arc<Services>>,
    req: Ruma<aliases::v3::Request>,
) -> Result<aliases::v3::Response> {
    services
        .rooms
        .check_can_see_state(&req.body.room_id, req.sender_user()?)?;
    Ok(aliases::v3::Response::new(
        services.rooms.room_aliases(&req.body.room_id)?,
    ))
}

fn page(
    services: &Services,
    search: Option<&str>,
    since: Option<&str>,
    limit: Option<UInt>,
) -> Result<(Vec<PublicRoomsChunk>, Option<String>, Option<String>, UInt)> {
    let offset = match since {
        Some(s) => s
            .strip_prefix('p')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::invalid_param("invalid since token"))?,
        None => 0usize,
    };
    let limit = limit.map_or(100, |l| u64::from(l) as usize).clamp(1, 500);
    let (entries, total) = services.rooms.public_rooms(search, offset, limit)?;
    let chunk = entries
        .into_iter()
        .map(serde_json::from_value)
        .collect::<std::result::Result<Vec<PublicRoomsChunk>, _>>()?;
    let next = (offset + chunk.len() < total).then(|| format!("p{}", offset + chunk.len()));
    let prev = (offset > 0).then(|| format!("p{}", offset.saturating_sub(limit)));
    Ok((
        chunk,
        next,
        prev,
        UInt::try_from(total as u64).unwrap_or_default(),
    ))
}

/// `GET /_matrix/client/v3/publicRooms`
async fn public_rooms_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    let (chunk, next, prev, total) =
        page(&services, None, req.body.since.as_deref(), req.body.limit)?;
    let mut res = get_public_rooms::v3::Response::new(chunk);
    res.next_batch = next;
    res.prev_batch = prev;
    res.total_room_count_estimate = Some(total);
    Ok(res)
}

/// `POST /_matrix/client/v3/publicRooms`
async fn public_rooms_filtered_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    let b = &req.body;
    let (chunk, next, prev, total) = page(
        &services,
        b.filter.generic_search_term.as_deref(),
        b.since.as_deref(),
        b.limit,
    )?;
    let mut res = get_public_rooms_filtered::v3::Response::new();
    res.chunk = chunk;
    res.next_batch = next;
    res.prev_batch = prev;
    res.total_room_count_estimate = Some(total);
    Ok(res)
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`
async fn get_visibility_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    if !services.rooms.exists(&req.body.room_id)? {
        return Err(Error::not_found("Unknown room"));
    }
    let visibility = if services.rooms.is_public(&req.body.room_id)? {
        Visibility::Public
    } else {
        Visibility::Private
    };
    Ok(get_room_visibility::v3::Response::new(visibility))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`
async fn set_visibility_route(
    State(services): State<Arc<Services>>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    let user = req.sender_user()?;
    let room_id = &req.body.room_id;
    if !services.rooms.exists(room_id)? {
        return Err(Error::not_found("Unknown room"));
    }
    let power = services.rooms.power_levels(room_id)?;
    if services.rooms.membership(room_id, user)? != Some(Membership::Join)
        || power.user_level(user) < power.event_level("m.room.canonical_alias", true)
    {
        return Err(Error::forbidden(
            "You may not change this room's directory visibility",
        ));
    }
    services
        .rooms
        .set_public(room_id, req.body.visibility == Visibility::Public)?;
    Ok(set_room_visibility::v3::Response::new())
}

/// `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}` (MSC3266; also the unstable
/// `im.nheko.summary` path): a room preview for members and for anyone when the room is
/// public, knockable or world-readable. Others get 404, as if the room did not exist.
async fn room_summary(
    State(services): State<Arc<Services>>,
    req: Ruma<ruma::api::client::room::get_summary::v1::Request>,
) -> Result<Json<Value>> {
    let rooms = &services.rooms;
    let not_found = || Error::not_found("Room not found or not previewable");
    let room_id = rooms
        .resolve_room(&req.body.room_id_or_alias)
        .map_err(|_| not_found())?;
    let mut entry = rooms.directory_entry(&room_id)?;
    let membership = match &req.session {
        Some(s) => rooms.membership(&room_id, &s.user_id)?,
        None => None,
    };
    let open = matches!(
        entry["join_rule"].as_str(),
        Some("public" | "knock" | "knock_restricted" | "restricted")
    ) || entry["world_readable"] == true;
    let member = matches!(
        membership,
        Some(Membership::Join | Membership::Invite | Membership::Knock)
    );
    if !open && !member {
        return Err(not_found());
    }
    entry["room_version"] = json!(rooms.room_version(&room_id)?);
    if let Some(enc) = rooms.state_content(&room_id, "m.room.encryption", "")? {
        entry["encryption"] = enc["algorithm"].clone();
    }
    if let Some(m) = membership {
        entry["membership"] = json!(m.as_str());
    }
    Ok(Json(entry))
}
