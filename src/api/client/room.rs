//! Rooms: create, state, send, redact, single events, `/context`, `/messages`, members.

use std::sync::Arc;

use axum::{extract::State, Json, Router};
use ruma::{
    api::{
        client::{
            context::get_context,
            membership::{get_member_events, joined_members, joined_rooms},
            message::{get_message_events, send_message_event},
            redact::redact_event,
            room::{create_room, get_room_event},
            state::{get_state_event_for_key, get_state_events, send_state_event},
        },
        Direction as RumaDirection,
    },
    events::room::member::MembershipState,
    serde::Raw,
};
use serde_json::{json, Value};

use crate::{
    api::ruma::{raw, RouterExt, RouterJsonExt, Ruma},
    ratelimit::Action,
    rooms::{
        CreateRoom, Direction, EventFilter, MemberProfile, Membership, NewEvent, Token, Transaction,
    },
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    // MSC4140 delayed sends under the unstable prefix (the usual paths take the delay too).
    let router = super::rtc::route_json_at(
        router,
        "/_matrix/client/unstable/org.matrix.msc4140/rooms/{room_id}/send/{event_type}/{txn_id}",
        send_message_route,
    );
    let router = super::rtc::route_json_at(
        router,
        "/_matrix/client/unstable/org.matrix.msc4140/rooms/{room_id}/state/{event_type}/{state_key}",
        send_state_route,
    );
    router
        .ruma(create_room_route)
        .ruma_json(send_message_route)
        .ruma_json(send_state_route)
        .ruma(get_state_route)
        .ruma(get_state_for_key_route)
        .ruma(redact_route)
        .ruma(get_event_route)
        .ruma(context_route)
        .ruma(messages_route)
        .ruma(members_route)
        .ruma(joined_members_route)
        .ruma(joined_rooms_route)
        .ruma(upgrade_route)
}

fn profile_of(services: &Services, user: &ruma::UserId) -> Result<MemberProfile> {
    let (displayname, avatar_url) = services.users.profile(user)?;
    Ok(MemberProfile {
        displayname,
        avatar_url,
    })
}

/// `POST /_matrix/client/v3/createRoom`
async fn create_room_route(
    State(services): State<Arc<Services>>,
    req: Ruma<create_room::v3::Request>,
) -> Result<create_room::v3::Response> {
    services
        .rate_limits
        .check_session(Action::CreateRoom, req.session()?)?;
    let creator = req.sender_user()?.clone();
    let body = &req.body;
    if let Some(name) = &body.room_alias_name {
        services.appservices.check_exclusive(
            myelin_appservice::NamespaceKind::Aliases,
            &format!("#{name}:{}", services.config.server_name),
            req.session()?.appservice.as_deref(),
        )?;
    }
    let mut initial_state = Vec::new();
    for event in &body.initial_state {
        let v: Value = serde_json::from_str(event.json().get())?;
        let kind = v["type"]
            .as_str()
            .ok_or_else(|| Error::bad_json("initial_state event without type"))?;
        let key = v["state_key"].as_str().unwrap_or("");
        initial_state.push((
            kind.to_owned(),
            key.to_owned(),
            v.get("content").cloned().unwrap_or(json!({})),
        ));
    }
    let object = |r: Option<&str>| -> Result<Option<serde_json::Map<String, Value>>> {
        match r {
            Some(s) => match serde_json::from_str(s)? {
                Value::Object(m) => Ok(Some(m)),
                _ => Err(Error::bad_json("expected a JSON object")),
            },
            None => Ok(None),
        }
    };
    let profile = profile_of(&services, &creator)?;
    let request = CreateRoom {
        preset: body.preset.as_ref().map(|p| p.as_str().to_owned()),
        visibility_public: body.visibility == ruma::api::client::room::Visibility::Public,
        name: body.name.clone(),
        topic: body.topic.clone(),
        invite: body
            .invite
            .iter()
            .map(|u| Ok((u.clone(), profile_of(&services, u)?)))
            .collect::<Result<_>>()?,
        is_direct: body.is_direct,
        initial_state,
        power_level_content_override: object(
            body.power_level_content_override
                .as_ref()
                .map(|r| r.json().get()),
        )?,
        room_alias_name: body.room_alias_name.clone(),
        room_version: body.room_version.as_ref().map(|v| v.as_str().to_owned()),
        creation_content: object(body.creation_content.as_ref().map(|r| r.json().get()))?,
        creator_profile: (profile.displayname, profile.avatar_url),
    };
    let room_id = services.rooms.create_room(&creator, request).await?;
    Ok(create_room::v3::Response::new(room_id))
}

/// The largest integer canonical JSON carries.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The `ts` query parameter (timestamp massaging): honoured for application services
/// only, ignored for everyone else.
fn appservice_ts<T>(req: &Ruma<T>) -> Result<Option<u64>> {
    if req.session()?.appservice.is_none() {
        return Ok(None);
    }
    match req.query_param("ts") {
        Some(ts) => ts
            .parse::<u64>()
            .ok()
            .filter(|ts| *ts <= MAX_SAFE_INTEGER)
            .map(Some)
            .ok_or_else(|| Error::invalid_param("ts must be a timestamp in milliseconds")),
        None => Ok(None),
    }
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`
///
/// With `?org.matrix.msc4140.delay=MS` the event is scheduled instead (`{"delay_id"}`).
async fn send_message_route(
    State(services): State<Arc<Services>>,
    req: Ruma<send_message_event::v3::Request>,
) -> Result<Json<Value>> {
    let session = req.session()?.clone();
    services.rate_limits.check_session(Action::Send, &session)?;
    let body = &req.body;
    let content: Value = serde_json::from_str(body.body.json().get())?;
    let kind = body.event_type.to_string();
    if let Some(res) = super::rtc::schedule_if_delayed(
        &services,
        &req,
        &body.room_id,
        &kind,
        None,
        &content,
        Some(&format!(
            "PUT /rooms/{}/send/{}/{}",
            body.room_id, body.event_type, body.txn_id
        )),
    )
    .await?
    {
        return Ok(res);
    }
    let redacts = if kind == "m.room.redaction" {
        let id = content["redacts"]
            .as_str()
            .ok_or_else(|| Error::bad_json("m.room.redaction needs content.redacts"))?;
        Some(ruma::EventId::parse(id).map_err(|e| Error::invalid_param(e.to_string()))?)
    } else {
        None
    };
    let mut event = NewEvent::message(kind, content);
    event.redacts = redacts;
    event.origin_server_ts = appservice_ts(&req)?;
    event.txn = Some(Transaction::new(
        session.device_id.clone(),
        format!("PUT /rooms/{}/send/{}", body.room_id, body.event_type),
        body.txn_id.as_str(),
    ));
    let (event_id, _) = services
        .rooms
        .send_to(&body.room_id, &session.user_id, event)
        .await?;
    Ok(Json(json!({ "event_id": event_id })))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
///
/// With `?org.matrix.msc4140.delay=MS` the event is scheduled instead (`{"delay_id"}`).
async fn send_state_route(
    State(services): State<Arc<Services>>,
    req: Ruma<send_state_event::v3::Request>,
) -> Result<Json<Value>> {
    services
        .rate_limits
        .check_session(Action::Send, req.session()?)?;
    let sender = req.sender_user()?.clone();
    let body = &req.body;
    let content: Value = serde_json::from_str(body.body.json().get())?;
    let kind = body.event_type.to_string();
    if let Some(res) = super::rtc::schedule_if_delayed(
        &services,
        &req,
        &body.room_id,
        &kind,
        Some(&body.state_key),
        &content,
        None,
    )
    .await?
    {
        return Ok(res);
    }
    if kind == "m.room.canonical_alias" {
        for alias in content["alias"].as_str().into_iter().chain(
            content["alt_aliases"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str),
        ) {
            let alias =
                ruma::RoomAliasId::parse(alias).map_err(|e| Error::invalid_param(e.to_string()))?;
            if services.rooms.resolve_alias(&alias)?.as_deref() != Some(&body.room_id) {
                return Err(Error::matrix(
                    crate::ErrorKind::Invalid,
                    "M_BAD_ALIAS",
                    "Alias does not point at this room",
                ));
            }
        }
    }
    let mut event = NewEvent::state(kind, body.state_key.clone(), content);
    event.origin_server_ts = appservice_ts(&req)?;
    let (event_id, _) = services
        .rooms
        .send_to(&body.room_id, &sender, event)
        .await?;
    Ok(Json(json!({ "event_id": event_id })))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state`
async fn get_state_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_state_events::v3::Request>,
) -> Result<get_state_events::v3::Response> {
    let user = req.sender_user()?;
    let room_id = &req.body.room_id;
    let state = visible_state(&services, room_id, user)?;
    let events = state
        .iter()
        .map(|p| raw(&p.to_client_event()))
        .collect::<Result<Vec<_>>>()?;
    Ok(get_state_events::v3::Response::new(events))
}

/// State as the user may see it: current state when joined, else as of when they left.
fn visible_state(
    services: &Services,
    room_id: &ruma::RoomId,
    user: &ruma::UserId,
) -> Result<Vec<Arc<crate::events::Pdu>>> {
    let until = services.rooms.visible_until(room_id, user)?;
    let map = if until == u64::MAX {
        services.rooms.current_state(room_id)?
    } else {
        services.rooms.state_at(room_id, until)?
    };
    services.rooms.state_events(&map)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
async fn get_state_for_key_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response> {
    let user = req.sender_user()?;
    let body = &req.body;
    let kind = body.event_type.to_string();
    let state = visible_state(&services, &body.room_id, user)?;
    let pdu = state
        .into_iter()
        .find(|p| {
            p.kind.to_string() == kind && p.state_key.as_deref() == Some(body.state_key.as_str())
        })
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let value = match body.format {
        ruma::api::client::state::get_state_event_for_key::v3::StateEventFormat::Event => {
            pdu.to_client_event()
        }
        _ => serde_json::from_str(pdu.content.get())?,
    };
    Ok(get_state_event_for_key::v3::Response::new(
        serde_json::value::to_raw_value(&value)?,
    ))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`
async fn redact_route(
    State(services): State<Arc<Services>>,
    req: Ruma<redact_event::v3::Request>,
) -> Result<redact_event::v3::Response> {
    let session = req.session()?.clone();
    let body = &req.body;
    let mut content = json!({});
    if let Some(reason) = &body.reason {
        content["reason"] = json!(reason);
    }
    let mut event = NewEvent::message("m.room.redaction", content);
    event.redacts = Some(body.event_id.clone());
    event.txn = Some(Transaction::new(
        session.device_id.clone(),
        format!("PUT /rooms/{}/redact/{}", body.room_id, body.event_id),
        body.txn_id.as_str(),
    ));
    let (event_id, _) = services
        .rooms
        .send_to(&body.room_id, &session.user_id, event)
        .await?;
    Ok(redact_event::v3::Response::new(event_id))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
async fn get_event_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_room_event::v3::Request>,
) -> Result<get_room_event::v3::Response> {
    let user = req.sender_user()?;
    let body = &req.body;
    let pdu = services
        .rooms
        .visible_event(&body.room_id, user, &body.event_id)?;
    let mut event = [pdu.to_client_event()];
    services
        .rooms
        .add_unsigned(&body.room_id, user, &mut event)?;
    Ok(get_room_event::v3::Response::new(raw(&event[0])?))
}

fn filter_json(filter: &impl serde::Serialize) -> Result<EventFilter> {
    Ok(EventFilter::from_json(&serde_json::to_value(filter)?))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`
async fn context_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_context::v3::Request>,
) -> Result<get_context::v3::Response> {
    let user = req.sender_user()?;
    let body = &req.body;
    let filter = filter_json(&body.filter)?;
    let limit = u64::from(body.limit) as usize;
    let page = services
        .rooms
        .context(&body.room_id, user, &body.event_id, limit, &filter)?;
    let mut res = get_context::v3::Response::new();
    res.start = Some(page.start.to_string());
    res.end = Some(page.end.to_string());
    let served = |pdus: &[Arc<crate::events::Pdu>]| -> Result<Vec<Value>> {
        let mut events: Vec<Value> = pdus.iter().map(|p| p.to_client_event()).collect();
        services
            .rooms
            .add_unsigned(&body.room_id, user, &mut events)?;
        Ok(events)
    };
    res.event = served(std::slice::from_ref(&page.event))?
        .first()
        .map(raw)
        .transpose()?;
    res.events_before = served(&page.events_before)?
        .iter()
        .map(raw)
        .collect::<Result<_>>()?;
    res.events_after = served(&page.events_after)?
        .iter()
        .map(raw)
        .collect::<Result<_>>()?;
    res.state = page
        .state
        .iter()
        .map(|p| raw(&p.to_client_event()))
        .collect::<Result<_>>()?;
    Ok(res)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`
async fn messages_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response> {
    let user = req.sender_user()?;
    let body = &req.body;
    let filter = filter_json(&body.filter)?;
    let dir = match body.dir {
        RumaDirection::Backward => Direction::Backward,
        RumaDirection::Forward => Direction::Forward,
    };
    let from = body.from.as_deref().map(Token::parse).transpose()?;
    let to = body.to.as_deref().map(Token::parse).transpose()?;
    let limit = filter.limit.unwrap_or(u64::from(body.limit) as usize);
    let (start, page) =
        services
            .rooms
            .messages(&body.room_id, user, from, to, dir, limit, &filter)?;
    let mut res = get_message_events::v3::Response::new();
    res.start = start.to_string();
    res.end = page.end.map(|t| t.to_string());
    let mut chunk: Vec<Value> = page.chunk.iter().map(|p| p.to_client_event()).collect();
    services
        .rooms
        .add_transaction_ids(&mut chunk, user, req.sender_device()?)?;
    services
        .rooms
        .add_unsigned(&body.room_id, user, &mut chunk)?;
    res.chunk = chunk.iter().map(raw).collect::<Result<_>>()?;
    res.state = page
        .state
        .iter()
        .map(|p| raw(&p.to_client_event()))
        .collect::<Result<_>>()?;
    Ok(res)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`
async fn members_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_member_events::v3::Request>,
) -> Result<get_member_events::v3::Response> {
    let user = req.sender_user()?;
    let body = &req.body;
    let until = services.rooms.visible_until(&body.room_id, user)?;
    let at = match &body.at {
        Some(token) => Token::parse(token)?.0.min(until),
        None => until,
    };
    let map = if at == u64::MAX {
        services.rooms.current_state(&body.room_id)?
    } else {
        services.rooms.state_at(&body.room_id, at)?
    };
    let want = |m: &MembershipState| Membership::parse(m.as_str());
    let mut chunk = Vec::new();
    for pdu in services.rooms.state_events(&map)? {
        if pdu.kind.to_string() != "m.room.member" {
            continue;
        }
        let content: Value = serde_json::from_str(pdu.content.get())?;
        let m = Membership::from_content(&content);
        if body.membership.as_ref().is_some_and(|w| want(w) != m)
            || body.not_membership.as_ref().is_some_and(|n| want(n) == m)
        {
            continue;
        }
        chunk.push(Raw::from_json(serde_json::value::to_raw_value(
            &pdu.to_client_event(),
        )?));
    }
    Ok(get_member_events::v3::Response::new(chunk))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`
async fn joined_members_route(
    State(services): State<Arc<Services>>,
    req: Ruma<joined_members::v3::Request>,
) -> Result<joined_members::v3::Response> {
    let user = req.sender_user()?;
    let room_id = &req.body.room_id;
    services.rooms.check_can_see_state(room_id, user)?;
    let mut joined = std::collections::BTreeMap::new();
    for member in services.rooms.members(room_id)?.joined() {
        let content = services
            .rooms
            .state_content(room_id, "m.room.member", member.as_str())?
            .unwrap_or_default();
        let mut info = joined_members::v3::RoomMember::new();
        info.display_name = content["displayname"].as_str().map(str::to_owned);
        info.avatar_url = content["avatar_url"].as_str().map(Into::into);
        joined.insert(member.to_owned(), info);
    }
    Ok(joined_members::v3::Response::new(joined))
}

/// `GET /_matrix/client/v3/joined_rooms`
async fn joined_rooms_route(
    State(services): State<Arc<Services>>,
    req: Ruma<joined_rooms::v3::Request>,
) -> Result<joined_rooms::v3::Response> {
    let user = req.sender_user()?;
    Ok(joined_rooms::v3::Response::new(
        services.rooms.joined_rooms(user)?,
    ))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/upgrade`
async fn upgrade_route(
    State(services): State<Arc<Services>>,
    req: Ruma<ruma::api::client::room::upgrade_room::v3::Request>,
) -> Result<ruma::api::client::room::upgrade_room::v3::Response> {
    let user = req.sender_user()?.clone();
    let new_room = services
        .rooms
        .upgrade_room(
            &req.body.room_id,
            &user,
            req.body.new_version.as_str(),
            profile_of(&services, &user)?,
        )
        .await?;
    Ok(ruma::api::client::room::upgrade_room::v3::Response::new(
        new_room,
    ))
}
