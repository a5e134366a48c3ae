//! Membership: join, invite, leave, forget, kick, ban, unban, knock.

use std::sync::Arc;

use axum::{extract::State, Router};
use ruma::api::client::{
    knock::knock_room,
    membership::{
        ban_user, forget_room, invite_user, join_room_by_id, join_room_by_id_or_alias, kick_user,
        leave_room, unban_user,
    },
};

use crate::{
    api::ruma::{RouterExt, Ruma},
    rooms::MemberProfile,
    services::Services,
    users::Session,
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .ruma(join_by_id_route)
        .ruma(join_route)
        .ruma(invite_route)
        .ruma(leave_route)
        .ruma(forget_route)
        .ruma(kick_route)
        .ruma(ban_route)
        .ruma(unban_route)
        .ruma(knock_route)
}

fn profile(services: &Services, user: &ruma::UserId) -> Result<MemberProfile> {
    let (displayname, avatar_url) = services.users.profile(user)?;
    Ok(MemberProfile {
        displayname,
        avatar_url,
    })
}

/// Guests may join only rooms whose `m.room.guest_access` is `can_join`.
fn check_guest_join(services: &Services, session: &Session, room_id: &ruma::RoomId) -> Result<()> {
    if !session.is_guest {
        return Ok(());
    }
    let access = services
        .rooms
        .state_content(room_id, "m.room.guest_access", "")?;
    if access.is_some_and(|c| c["guest_access"] == "can_join") {
        Ok(())
    } else {
        Err(Error::guest_access_forbidden(
            "Guests may not join this room",
        ))
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`
async fn join_by_id_route(
    State(services): State<Arc<Services>>,
    req: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response> {
    let user = req.sender_user()?;
    let room_id = &req.body.room_id;
    if !services.rooms.exists(room_id)? {
        return Err(Error::not_found("No known room with that id"));
    }
    check_guest_join(&services, req.session()?, room_id)?;
    services
        .rooms
        .join(
            room_id,
            user,
            &profile(&services, user)?,
            req.body.reason.as_deref(),
        )
        .await?;
    Ok(join_room_by_id::v3::Response::new(room_id.clone()))
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}`
async fn join_route(
    State(services): State<Arc<Services>>,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let user = req.sender_user()?;
    let room_id = services.rooms.resolve_room(&req.body.room_id_or_alias)?;
    check_guest_join(&services, req.session()?, &room_id)?;
    services
        .rooms
        .join(
            &room_id,
            user,
            &profile(&services, user)?,
            req.body.reason.as_deref(),
        )
        .await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`
async fn invite_route(
    State(services): State<Arc<Services>>,
    req: Ruma<invite_user::v3::Request>,
) -> Result<invite_user::v3::Response> {
    let user = req.sender_user()?;
    let body = &req.body;
    let invite_user::v3::InvitationRecipient::UserId(target) = &body.recipient else {
        return Err(Error::matrix(
            crate::ErrorKind::Invalid,
            "M_UNRECOGNIZED",
            "Third-party invites are not supported",
        ));
    };
    if !services.rooms.exists(&body.room_id)? {
        return Err(Error::forbidden("You are not in this room"));
    }
    let is_direct = req
        .json_body
        .as_ref()
        .and_then(|b| b.get("is_direct"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    services
        .rooms
        .invite(
            &body.room_id,
            user,
            &target.user_id,
            target.reason.as_deref(),
            is_direct,
            Some(&profile(&services, &target.user_id)?),
        )
        .await?;
    Ok(invite_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`
async fn leave_route(
    State(services): State<Arc<Services>>,
    req: Ruma<leave_room::v3::Request>,
) -> Result<leave_room::v3::Response> {
    let user = req.sender_user()?;
    if !services.rooms.exists(&req.body.room_id)? {
        return Err(Error::not_found("Unknown room"));
    }
    services
        .rooms
        .leave(&req.body.room_id, user, req.body.reason.as_deref())
        .await?;
    Ok(leave_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`
async fn forget_route(
    State(services): State<Arc<Services>>,
    req: Ruma<forget_room::v3::Request>,
) -> Result<forget_room::v3::Response> {
    services
        .rooms
        .forget(&req.body.room_id, req.sender_user()?)?;
    Ok(forget_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`
async fn kick_route(
    State(services): State<Arc<Services>>,
    req: Ruma<kick_user::v3::Request>,
) -> Result<kick_user::v3::Response> {
    let b = &req.body;
    services
        .rooms
        .kick(
            &b.room_id,
            req.sender_user()?,
            &b.user_id,
            b.reason.as_deref(),
        )
        .await?;
    Ok(kick_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`
async fn ban_route(
    State(services): State<Arc<Services>>,
    req: Ruma<ban_user::v3::Request>,
) -> Result<ban_user::v3::Response> {
    let b = &req.body;
    services
        .rooms
        .ban(
            &b.room_id,
            req.sender_user()?,
            &b.user_id,
            b.reason.as_deref(),
        )
        .await?;
    Ok(ban_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`
async fn unban_route(
    State(services): State<Arc<Services>>,
    req: Ruma<unban_user::v3::Request>,
) -> Result<unban_user::v3::Response> {
    let b = &req.body;
    services
        .rooms
        .unban(
            &b.room_id,
            req.sender_user()?,
            &b.user_id,
            b.reason.as_deref(),
        )
        .await?;
    Ok(unban_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}`
async fn knock_route(
    State(services): State<Arc<Services>>,
    req: Ruma<knock_room::v3::Request>,
) -> Result<knock_room::v3::Response> {
    let user = req.sender_user()?;
    let room_id = services.rooms.resolve_room(&req.body.room_id_or_alias)?;
    check_guest_join(&services, req.session()?, &room_id)?;
    services
        .rooms
        .knock(
            &room_id,
            user,
            &profile(&services, user)?,
            req.body.reason.as_deref(),
        )
        .await?;
    Ok(knock_room::v3::Response::new(room_id))
}
