//! What guest accounts may call: the client-server spec's "Guest access" module lists
//! the endpoints; every other authenticated endpoint answers 403
//! `M_GUEST_ACCESS_FORBIDDEN` to a guest.

use http::Method;

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
