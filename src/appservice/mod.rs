//! Application services: the registrations loaded at start (`appservices` in the config),
//! `as_token` sessions with `?user_id=` masquerading, exclusive namespaces, which events an
//! appservice is interested in, and the homeserver's requests to an appservice (pings;
//! transactions are in [`delivery`]).

pub mod delivery;
pub mod e2ee;
pub mod ephemeral;
pub mod thirdparty;

use std::{path::PathBuf, sync::Arc, time::Duration};

use myelin_appservice::{validate_set, NamespaceKind, PingRequest, Registration};
use ruma::{OwnedDeviceId, UserId};

use crate::{
    e2ee::E2eeService,
    events::Pdu,
    rooms::RoomsService,
    storage::Storage,
    users::{Session, UsersService},
    Error, Result,
};

pub use delivery::AppserviceConsumer;

/// Longest wait for an appservice's answer to a transaction or a ping.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads and validates the registration files; the error names the file and field.
pub fn load_registrations(
    paths: &[PathBuf],
    server_name: &str,
) -> anyhow::Result<Vec<Registration>> {
    let mut regs = Vec::with_capacity(paths.len());
    for path in paths {
        regs.push(Registration::from_file(path)?);
    }
    validate_set(&regs, server_name)?;
    Ok(regs)
}

/// The registered appservices and what the server does for and with them.
pub struct AppserviceService {
    registrations: Vec<Arc<Registration>>,
    server_name: String,
    storage: Arc<Storage>,
    users: Arc<UsersService>,
    rooms: Arc<RoomsService>,
    e2ee: Arc<E2eeService>,
    http: reqwest::Client,
}

/// Compares two secrets without an early exit on the first differing byte.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a ping failed (the spec's errcodes).
fn ping_error(kind: crate::ErrorKind, errcode: &'static str, message: String) -> Error {
    Error::matrix(kind, errcode, message)
}

impl AppserviceService {
    /// The service over already validated registrations; creates each appservice's own
    /// user when missing and refuses an `as_token` that is also a user's access token.
    pub fn new(
        registrations: Vec<Arc<Registration>>,
        server_name: &str,
        storage: Arc<Storage>,
        users: Arc<UsersService>,
        rooms: Arc<RoomsService>,
        e2ee: Arc<E2eeService>,
    ) -> Result<AppserviceService> {
        for reg in &registrations {
            if users.authenticate(&reg.as_token).is_ok() {
                return Err(Error::internal(format!(
                    "{}: as_token: is also a user's access token",
                    reg.file
                )));
            }
            let sender = UserId::parse(reg.sender(server_name))
                .map_err(|e| Error::internal(format!("{}: sender_localpart: {e}", reg.file)))?;
            if !users.exists(&sender)? {
                users.create_user(sender.localpart(), None, false)?;
            }
        }
        // No proxy and no redirects: the appservice is where its registration says.
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::internal(format!("appservice HTTP client: {e}")))?;
        Ok(AppserviceService {
            registrations,
            server_name: server_name.to_owned(),
            storage,
            users,
            rooms,
            e2ee,
            http,
        })
    }

    /// Every registration.
    pub fn registrations(&self) -> &[Arc<Registration>] {
        &self.registrations
    }

    /// The registration with this id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<Registration>> {
        self.registrations.iter().find(|r| r.id == id)
    }

    /// The registration whose `as_token` this is (compared in constant time).
    pub fn by_as_token(&self, token: &str) -> Option<&Arc<Registration>> {
        self.registrations
            .iter()
            .find(|r| same_secret(r.as_token.as_bytes(), token.as_bytes()))
    }

    /// The session of a request made with an `as_token`: as the appservice's own user, or
    /// as `user_id` (`?user_id=`) when that user is inside its namespace and exists
    /// (403 `M_FORBIDDEN` otherwise). `device_id` selects one of that user's devices.
    pub fn session(
        &self,
        reg: &Registration,
        user_id: Option<&str>,
        device_id: Option<&str>,
    ) -> Result<Session> {
        let sender = reg.sender(&self.server_name);
        let user = user_id.unwrap_or(&sender);
        let user_id = UserId::parse(user)
            .map_err(|_| Error::invalid_param(format!("user_id {user:?} is not a user id")))?;
        if user_id.server_name() != self.server_name.as_str()
            || !reg.owns_user(user_id.as_str(), &self.server_name)
        {
            return Err(Error::forbidden(
                "The user is not in the application service's namespace",
            ));
        }
        if !self.users.exists(&user_id)? {
            return Err(Error::forbidden(
                "The application service has not registered this user",
            ));
        }
        if self.users.is_deactivated(&user_id)? {
            return Err(Error::user_deactivated());
        }
        let device_id = match device_id {
            Some(d) => {
                let d = OwnedDeviceId::from(d);
                if self.users.device(&user_id, &d)?.is_none() {
                    return Err(Error::forbidden("Unknown device for this user"));
                }
                d
            }
            None => OwnedDeviceId::from("APPSERVICE"),
        };
        Ok(Session {
            user_id,
            device_id,
            is_guest: false,
            rate_limit_exempt: !reg.rate_limited,
            appservice: Some(reg.id.clone()),
        })
    }

    /// Refuses (400 `M_EXCLUSIVE`) a value inside an exclusive namespace of an appservice
    /// other than `acting` (the appservice making the request, if any).
    pub fn check_exclusive(
        &self,
        kind: NamespaceKind,
        value: &str,
        acting: Option<&str>,
    ) -> Result<()> {
        let owner = self
            .registrations
            .iter()
            .find(|r| Some(r.id.as_str()) != acting && r.matches_exclusive(kind, value));
        match owner {
            Some(_) => Err(Error::matrix(
                crate::ErrorKind::Invalid,
                "M_EXCLUSIVE",
                format!("{value} is reserved by an application service"),
            )),
            None => Ok(()),
        }
    }

    /// Whether a registration's appservice wants this event: sent by or about one of its
    /// users, in a room in its namespaces (by id or alias) or with one of its users joined.
    pub fn is_interested(&self, reg: &Registration, pdu: &Pdu) -> Result<bool> {
        let owns = |user: &str| reg.owns_user(user, &self.server_name);
        if owns(pdu.sender.as_str()) {
            return Ok(true);
        }
        if pdu.kind == ruma::events::TimelineEventType::RoomMember
            && pdu.state_key.as_deref().is_some_and(&owns)
        {
            return Ok(true);
        }
        self.is_interested_in_room(reg, &pdu.room_id)
    }

    /// Whether a registration's appservice follows a room: in its room namespace, with an
    /// alias in its alias namespace, or with one of its users joined.
    pub fn is_interested_in_room(
        &self,
        reg: &Registration,
        room_id: &ruma::RoomId,
    ) -> Result<bool> {
        if reg.matches(NamespaceKind::Rooms, room_id.as_str()) {
            return Ok(true);
        }
        if !reg.namespaces.aliases.is_empty() {
            for alias in self.rooms.room_aliases(room_id)? {
                if reg.matches(NamespaceKind::Aliases, alias.as_str()) {
                    return Ok(true);
                }
            }
        }
        Ok(self
            .rooms
            .members(room_id)?
            .joined()
            .any(|u| reg.owns_user(u.as_str(), &self.server_name)))
    }

    /// `POST {url}/_matrix/app/v1/ping` with the appservice's `hs_token`; the time it took
    /// in milliseconds, or the spec's errors (`M_URL_NOT_SET`, `M_CONNECTION_TIMEOUT`,
    /// `M_CONNECTION_FAILED`, `M_BAD_STATUS`).
    pub async fn ping(&self, reg: &Registration, transaction_id: Option<String>) -> Result<u64> {
        let Some(url) = &reg.url else {
            return Err(ping_error(
                crate::ErrorKind::Invalid,
                "M_URL_NOT_SET",
                "The application service has no URL".to_owned(),
            ));
        };
        let started = std::time::Instant::now();
        let sent = self
            .http
            .post(format!("{url}/_matrix/app/v1/ping"))
            .bearer_auth(&reg.hs_token)
            .json(&PingRequest { transaction_id })
            .send()
            .await;
        let elapsed = started.elapsed().as_millis() as u64;
        match sent {
            Ok(resp) if resp.status().is_success() => Ok(elapsed),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                Err(ping_error(
                    crate::ErrorKind::Upstream,
                    "M_BAD_STATUS",
                    "The application service answered with an error".to_owned(),
                )
                .with_field("status", serde_json::json!(status))
                .with_field("body", serde_json::json!(body)))
            }
            Err(e) if e.is_timeout() => Err(ping_error(
                crate::ErrorKind::UpstreamTimeout,
                "M_CONNECTION_TIMEOUT",
                "The application service did not answer in time".to_owned(),
            )),
            Err(e) => Err(ping_error(
                crate::ErrorKind::Upstream,
                "M_CONNECTION_FAILED",
                format!("Cannot reach the application service: {}", e.without_url()),
            )),
        }
    }

    /// Asks the appservices whose user namespace holds `user` (a user of this server)
    /// whether it exists: `GET {url}/_matrix/app/v1/users/{userId}`. True when one
    /// answered 2xx, i.e. it has created the user by now.
    pub async fn query_user(&self, user: &UserId) -> bool {
        user.server_name() == self.server_name.as_str()
            && self
                .query(NamespaceKind::Users, "users", user.as_str())
                .await
    }

    /// The same for a room alias of this server: `GET {url}/_matrix/app/v1/rooms/{alias}`.
    pub async fn query_alias(&self, alias: &ruma::RoomAliasId) -> bool {
        alias.server_name() == self.server_name.as_str()
            && self
                .query(NamespaceKind::Aliases, "rooms", alias.as_str())
                .await
    }

    async fn query(&self, kind: NamespaceKind, endpoint: &str, value: &str) -> bool {
        for reg in self.registrations.iter().filter(|r| r.matches(kind, value)) {
            let Some(base) = &reg.url else {
                continue;
            };
            let Ok(mut url) = reqwest::Url::parse(&format!("{base}/_matrix/app/v1/{endpoint}"))
            else {
                continue;
            };
            if let Ok(mut segments) = url.path_segments_mut() {
                segments.push(value);
            }
            match self.http.get(url).bearer_auth(&reg.hs_token).send().await {
                Ok(resp) if resp.status().is_success() => return true,
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    appservice = %reg.id, error = %e.without_url(), "appservice query failed"
                ),
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use crate::{config::Config, services::Services};

    use myelin_appservice::NamespaceKind;

    fn services(dir: &std::path::Path) -> std::sync::Arc<Services> {
        let reg = dir.join("br.yaml");
        std::fs::write(
            &reg,
            "id: br\nurl: null\nas_token: br_as\nhs_token: br_hs\nsender_localpart: br_bot\n\
             rate_limited: false\nnamespaces:\n  users: [{exclusive: true, regex: \"@br_.*\"}]\n\
             \x20 aliases: [{exclusive: true, regex: \"#br_.*\"}]\n",
        )
        .unwrap();
        let config = Config {
            appservices: vec![reg],
            ..Config::default()
        };
        Services::in_memory(config).unwrap()
    }

    #[test]
    fn sessions_masquerade_only_inside_the_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let s = services(dir.path());
        let a = &s.appservices;
        let reg = a.by_as_token("br_as").unwrap().clone();
        assert!(a.by_as_token("br_hs").is_none());
        // The sender exists from the start and is the default identity.
        let own = a.session(&reg, None, None).unwrap();
        assert_eq!(own.user_id.as_str(), "@br_bot:localhost");
        assert_eq!(own.appservice.as_deref(), Some("br"));
        assert!(own.rate_limit_exempt);
        // A namespace user must be registered first.
        let e = a.session(&reg, Some("@br_x:localhost"), None).unwrap_err();
        assert_eq!(e.errcode(), "M_FORBIDDEN");
        s.users.create_user("br_x", None, false).unwrap();
        let puppet = a.session(&reg, Some("@br_x:localhost"), None).unwrap();
        assert_eq!(puppet.user_id.as_str(), "@br_x:localhost");
        // Outside the namespace, another server, an unknown device: refused.
        s.users.create_user("alice", None, false).unwrap();
        for user in ["@alice:localhost", "@br_x:elsewhere"] {
            let e = a.session(&reg, Some(user), None).unwrap_err();
            assert_eq!(e.errcode(), "M_FORBIDDEN", "{user}");
        }
        let e = a
            .session(&reg, Some("@br_x:localhost"), Some("NOPE"))
            .unwrap_err();
        assert_eq!(e.errcode(), "M_FORBIDDEN");
        let e = a.session(&reg, Some("not a user"), None).unwrap_err();
        assert_eq!(e.errcode(), "M_INVALID_PARAM");
    }

    #[test]
    fn exclusive_namespaces_refuse_everyone_else() {
        let dir = tempfile::tempdir().unwrap();
        let s = services(dir.path());
        let a = &s.appservices;
        let e = a
            .check_exclusive(NamespaceKind::Users, "@br_y:localhost", None)
            .unwrap_err();
        assert_eq!(e.errcode(), "M_EXCLUSIVE");
        let e = a
            .check_exclusive(NamespaceKind::Aliases, "#br_room:localhost", Some("other"))
            .unwrap_err();
        assert_eq!(e.errcode(), "M_EXCLUSIVE");
        a.check_exclusive(NamespaceKind::Aliases, "#br_room:localhost", Some("br"))
            .unwrap();
        a.check_exclusive(NamespaceKind::Users, "@alice:localhost", None)
            .unwrap();
    }

    #[test]
    fn an_as_token_that_is_a_user_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("a.yaml");
        std::fs::write(
            &reg,
            "id: a\nas_token: a_as\nhs_token: a_hs\nsender_localpart: a_bot\n",
        )
        .unwrap();
        let regs = super::load_registrations(std::slice::from_ref(&reg), "localhost").unwrap();
        let storage = std::sync::Arc::new(crate::storage::Storage::in_memory());
        let config = std::sync::Arc::new(Config::default());
        let users = std::sync::Arc::new(
            crate::users::UsersService::new(
                config.clone(),
                storage.clone(),
                std::sync::Arc::new(crate::stream::Notifier::new()),
            )
            .unwrap(),
        );
        let s = Services::in_memory(Config::default()).unwrap();
        let alice = users.create_user("alice", None, false).unwrap();
        let (token, _) = users.create_session_now(&alice, None, None).unwrap();
        let mut regs = regs;
        regs[0].as_token = token;
        let regs = regs.into_iter().map(std::sync::Arc::new).collect();
        let refused = super::AppserviceService::new(
            regs,
            "localhost",
            storage,
            users,
            s.rooms.clone(),
            s.e2ee.clone(),
        );
        let e = refused.err().unwrap();
        assert!(
            e.to_string()
                .contains("as_token: is also a user's access token"),
            "{e}"
        );
    }
}
