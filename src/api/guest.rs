//! What guest accounts and temporary participants may call — one check, [`authorize`],
//! run by every authenticating extractor:
//!
//! - guests, when general guest access is on (`registration.allow_guests`): the
//!   client-server spec's "Guest access" endpoints, plus taking part in a meeting;
//! - **meeting guests** (guests while general guest access is off: the external guests
//!   who join by link): only taking part in the meetings they joined by link — reading
//!   and posting there, their call membership, OpenID and SFU tokens, their own account
//!   basics; every other endpoint, another room, the room directory, another user's
//!   profile answer 403 `M_GUEST_ACCESS_FORBIDDEN`;
//! - a local user in a room they joined temporarily (by link): in that room, only
//!   reading, posting, receipts, typing, leaving and their call membership (403
//!   `M_FORBIDDEN` otherwise: no invites, kicks or other state); elsewhere their
//!   account works as usual.

use http::Method;
use ruma::{OwnedRoomId, RoomId};

use crate::{services::Services, users::Session, Error, Result};

/// Endpoint patterns (after the `/_matrix/client/<version>` prefix) guests may use; `*`
/// matches one path segment.
const ALLOWED: &[(&str, &str)] = &[
    ("GET", "/sync"),
    ("GET", "/events"),
    ("GET", "/account/whoami"),
    ("GET", "/capabilities"),
    ("GET", "/pushrules/*"),
    ("GET", "/pushrules"),
    ("GET", "/rooms/*/state"),
    ("GET", "/rooms/*/state/*"),
    ("GET", "/rooms/*/state/*/*"),
    ("GET", "/rooms/*/context/*"),
    ("GET", "/rooms/*/event/*"),
    ("GET", "/rooms/*/messages"),
    ("GET", "/rooms/*/members"),
    ("GET", "/rooms/*/joined_members"),
    ("GET", "/rooms/*/initialSync"),
    ("GET", "/joined_rooms"),
    ("PUT", "/rooms/*/send/m.room.message/*"),
    ("PUT", "/rooms/*/typing/*"),
    ("POST", "/rooms/*/receipt/*/*"),
    ("POST", "/rooms/*/read_markers"),
    ("POST", "/rooms/*/join"),
    ("POST", "/join/*"),
    ("POST", "/rooms/*/leave"),
    ("GET", "/profile/*"),
    ("GET", "/profile/*/*"),
    ("PUT", "/profile/*/displayname"),
    ("PUT", "/profile/*/avatar_url"),
    ("GET", "/presence/*/status"),
    ("PUT", "/presence/*/status"),
    ("GET", "/user/*/account_data/*"),
    ("PUT", "/user/*/account_data/*"),
    ("GET", "/user/*/rooms/*/account_data/*"),
    ("PUT", "/user/*/rooms/*/account_data/*"),
    ("GET", "/user/*/rooms/*/tags"),
    ("PUT", "/user/*/rooms/*/tags/*"),
    ("DELETE", "/user/*/rooms/*/tags/*"),
    ("POST", "/user/*/filter"),
    ("GET", "/user/*/filter/*"),
    ("GET", "/publicRooms"),
    ("POST", "/publicRooms"),
    ("GET", "/directory/room/*"),
    ("GET", "/voip/turnServer"),
    ("POST", "/logout"),
    ("POST", "/logout/all"),
    ("GET", "/devices"),
    ("GET", "/devices/*"),
    ("PUT", "/devices/*"),
    ("PUT", "/sendToDevice/*/*"),
    ("POST", "/keys/upload"),
    ("POST", "/keys/query"),
    ("POST", "/keys/claim"),
    ("GET", "/keys/changes"),
];

/// What a temporary participant may do in the room named in the path (after the client
/// prefix): read, post, receipts, typing, leave, and their call membership (MSC3401 and
/// MatrixRTC, delayed or not).
const IN_MEETING_ROOM: &[(&str, &str)] = &[
    ("GET", "/rooms/*/state"),
    ("GET", "/rooms/*/state/*"),
    ("GET", "/rooms/*/state/*/*"),
    ("GET", "/rooms/*/context/*"),
    ("GET", "/rooms/*/event/*"),
    ("GET", "/rooms/*/messages"),
    ("GET", "/rooms/*/members"),
    ("GET", "/rooms/*/joined_members"),
    ("GET", "/rooms/*/relations/*"),
    ("GET", "/rooms/*/relations/*/*"),
    ("GET", "/rooms/*/relations/*/*/*"),
    ("PUT", "/rooms/*/send/*/*"),
    ("PUT", "/rooms/*/typing/*"),
    ("POST", "/rooms/*/receipt/*/*"),
    ("POST", "/rooms/*/read_markers"),
    ("POST", "/rooms/*/leave"),
    ("PUT", "/rooms/*/state/org.matrix.msc3401.call.member/*"),
    ("PUT", "/rooms/*/state/m.rtc.member/*"),
    ("GET", "/user/*/rooms/*/account_data/*"),
    ("PUT", "/user/*/rooms/*/account_data/*"),
    ("GET", "/user/*/rooms/*/tags"),
];

/// What a meeting guest may call besides [`IN_MEETING_ROOM`] (room-less endpoints; the
/// `/profile` ones for the guest itself only).
const MEETING_GUEST: &[(&str, &str)] = &[
    ("GET", "/sync"),
    ("GET", "/account/whoami"),
    ("GET", "/capabilities"),
    ("GET", "/pushrules"),
    ("GET", "/pushrules/*"),
    ("GET", "/joined_rooms"),
    ("POST", "/logout"),
    ("POST", "/logout/all"),
    ("GET", "/devices"),
    ("GET", "/devices/*"),
    ("PUT", "/devices/*"),
    ("POST", "/user/*/filter"),
    ("GET", "/user/*/filter/*"),
    ("GET", "/user/*/account_data/*"),
    ("PUT", "/user/*/account_data/*"),
    ("POST", "/user/*/openid/request_token"),
    ("PUT", "/presence/*/status"),
    ("GET", "/voip/turnServer"),
    ("PUT", "/sendToDevice/*/*"),
    ("POST", "/keys/upload"),
    ("POST", "/keys/query"),
    ("POST", "/keys/claim"),
    ("GET", "/keys/changes"),
    ("GET", "/rtc/transports"),
    ("POST", "/rtc/livekit/get_token"),
    ("POST", "/rtc/livekit/delegate_delayed_leave"),
    ("GET", "/delayed_events"),
    ("GET", "/delayed_events/*"),
    ("POST", "/delayed_events/*"),
    ("POST", "/delayed_events/*/*"),
    ("GET", "/profile/*"),
    ("GET", "/profile/*/*"),
    ("PUT", "/profile/*/displayname"),
];

/// Myelin's own endpoints a meeting guest may call (whole paths).
const MEETING_GUEST_MYELIN: &[(&str, &str)] =
    &[("POST", "/_matrix/client/unstable/io.myelin/join/*")];

/// The room a client path names: `/rooms/{roomId}/…` or `/user/{userId}/rooms/{roomId}/…`
/// (percent-decoded); `None` for room-less paths and unparsable ids.
fn room_in_path(suffix: &str) -> Option<OwnedRoomId> {
    let mut segments = suffix.split('/').skip(1);
    let raw = match segments.next()? {
        "rooms" => segments.next()?,
        "user" => {
            segments.next()?;
            (segments.next()? == "rooms").then_some(())?;
            segments.next()?
        }
        _ => return None,
    };
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    RoomId::parse(decoded.as_ref()).ok()
}

/// The user a `/profile/{userId}…` path names (percent-decoded).
fn profile_user(suffix: &str) -> Option<String> {
    let rest = suffix.strip_prefix("/profile/")?;
    let raw = rest.split('/').next()?;
    Some(
        percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .ok()?
            .into_owned(),
    )
}

fn any_matches(list: &[(&str, &str)], method: &Method, path: &str) -> bool {
    list.iter()
        .any(|(m, pattern)| *m == method.as_str() && matches(pattern, path))
}

/// Whether `session` may call `method path`: the guest and temporary-participant rules
/// of this module. 403 `M_GUEST_ACCESS_FORBIDDEN` (guests) or `M_FORBIDDEN` otherwise.
pub fn authorize(
    services: &Services,
    session: &Session,
    method: &Method,
    path: &str,
) -> Result<()> {
    let suffix = client_suffix(path);
    let room = suffix.and_then(room_in_path);
    let user = &session.user_id;
    if session.is_guest {
        let meeting_guest = !services.config.registration.allow_guests;
        let in_meeting = match (&room, suffix) {
            (Some(room), Some(suffix)) => {
                any_matches(IN_MEETING_ROOM, method, suffix)
                    && services.meetings.is_temporary(room, user)?
            }
            _ => false,
        };
        let allowed = in_meeting
            || any_matches(MEETING_GUEST_MYELIN, method, path)
            || match suffix {
                Some(suffix) if meeting_guest => {
                    room.is_none()
                        && any_matches(MEETING_GUEST, method, suffix)
                        && profile_user(suffix).is_none_or(|u| u == user.as_str())
                }
                Some(_) => guest_may_call(method, path),
                None => false,
            };
        if !allowed {
            return Err(Error::guest_access_forbidden(if room.is_some() {
                "Guests may only take part in the meetings they joined by link"
            } else {
                "Guest accounts may not use this endpoint"
            }));
        }
        return Ok(());
    }
    if let (Some(room), Some(suffix)) = (&room, suffix) {
        if !any_matches(IN_MEETING_ROOM, method, suffix)
            && services.meetings.is_temporary(room, user)?
        {
            return Err(Error::forbidden(
                "Temporary participants may only read, post and take part in the call",
            ));
        }
    }
    Ok(())
}

/// Public endpoints (no token needed) a meeting guest who presents its token is still
/// refused: the room directory and other users' profiles.
const PUBLIC_REFUSED: &[(&str, &str)] = &[
    ("GET", "/publicRooms"),
    ("GET", "/directory/room/*"),
    ("GET", "/directory/list/room/*"),
    ("GET", "/profile/*"),
    ("GET", "/profile/*/*"),
];

/// The check of [`authorize`] for an endpoint that needs no token, called with one: a
/// meeting guest may not use the directory or look up other users' profiles.
pub fn authorize_public(
    services: &Services,
    session: &Session,
    method: &Method,
    path: &str,
) -> Result<()> {
    if !session.is_guest || services.config.registration.allow_guests {
        return Ok(());
    }
    let Some(suffix) = client_suffix(path) else {
        return Ok(());
    };
    if any_matches(PUBLIC_REFUSED, method, suffix)
        && profile_user(suffix).is_none_or(|u| u != session.user_id.as_str())
    {
        return Err(Error::guest_access_forbidden(
            "Guests may only take part in the meetings they joined by link",
        ));
    }
    Ok(())
}

/// Strips `/_matrix/client/<version or unstable/...>` from a request path.
fn client_suffix(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/_matrix/client/")?;
    let (version, rest) = rest.split_once('/')?;
    if version == "unstable" {
        // `/unstable/<feature>/...` or plain `/unstable/...`
        return Some(rest.find('/').map_or(rest, |i| &rest[i..]));
    }
    Some(&path[path.len() - rest.len() - 1..])
}

fn matches(pattern: &str, path: &str) -> bool {
    let mut p = pattern.split('/');
    let mut s = path.trim_end_matches('/').split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some("*"), Some(seg)) if !seg.is_empty() => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Whether a guest may call `method path`.
pub fn guest_may_call(method: &Method, path: &str) -> bool {
    let Some(suffix) = client_suffix(path) else {
        return false;
    };
    ALLOWED
        .iter()
        .any(|(m, pattern)| *m == method.as_str() && matches(pattern, suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_named_in_paths() {
        let room = |p: &str| room_in_path(client_suffix(p).unwrap()).map(|r| r.to_string());
        assert_eq!(
            room("/_matrix/client/v3/rooms/%21a%3Ab/send/m.room.message/t").as_deref(),
            Some("!a:b")
        );
        assert_eq!(
            room("/_matrix/client/v3/user/%40u%3Ab/rooms/!a:b/account_data/x").as_deref(),
            Some("!a:b")
        );
        assert_eq!(
            room("/_matrix/client/unstable/io.myelin/rooms/!a:b/join_link").as_deref(),
            Some("!a:b")
        );
        assert_eq!(room("/_matrix/client/v3/sync"), None);
        assert_eq!(room("/_matrix/client/v3/user/@u:b/filter"), None);
        assert_eq!(
            profile_user("/profile/%40g%3Ab/displayname").as_deref(),
            Some("@g:b")
        );
        assert!(any_matches(
            IN_MEETING_ROOM,
            &Method::PUT,
            "/rooms/!a:b/state/org.matrix.msc3401.call.member/_@g:b_D_m.call"
        ));
        assert!(!any_matches(
            IN_MEETING_ROOM,
            &Method::PUT,
            "/rooms/!a:b/state/m.room.name/"
        ));
        assert!(!any_matches(
            IN_MEETING_ROOM,
            &Method::POST,
            "/rooms/!a:b/invite"
        ));
    }

    #[test]
    fn guests_get_the_spec_list_only() {
        assert!(guest_may_call(&Method::GET, "/_matrix/client/v3/sync"));
        assert!(guest_may_call(&Method::GET, "/_matrix/client/r0/sync"));
        assert!(guest_may_call(
            &Method::PUT,
            "/_matrix/client/v3/rooms/!a:b/send/m.room.message/t1"
        ));
        assert!(!guest_may_call(
            &Method::PUT,
            "/_matrix/client/v3/rooms/!a:b/send/m.reaction/t1"
        ));
        assert!(!guest_may_call(
            &Method::POST,
            "/_matrix/client/v3/createRoom"
        ));
        assert!(!guest_may_call(
            &Method::PUT,
            "/_matrix/client/v3/rooms/!a:b/state/m.room.name/"
        ));
        assert!(!guest_may_call(
            &Method::POST,
            "/_matrix/client/v3/rooms/!a:b/invite"
        ));
        assert!(guest_may_call(
            &Method::GET,
            "/_matrix/client/v3/rooms/!a:b/state/m.room.name/"
        ));
        assert!(!guest_may_call(&Method::GET, "/_synapse/admin/v1/register"));
    }
}
