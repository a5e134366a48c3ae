//! User-interactive authentication: flows of stages, sessions kept in the
//! `uia_sessions` tree until a flow is complete.
//!
//! A round answers `Ok(())` once a flow is complete, and otherwise the 401 body
//! `{flows, params, session, completed}` (plus `errcode`/`error` if the stage the client
//! just tried failed) as [`Error::Uia`].

use rand::{distributions::Alphanumeric, Rng};
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{now_ms, UsersService};
use crate::{Error, Result};

/// Sessions older than this are forgotten.
const SESSION_TTL_MS: u64 = 60 * 60 * 1000;

/// One UIA stage Myelin supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// `m.login.dummy`: always succeeds.
    Dummy,
    /// `m.login.password`: the user's own password.
    Password,
    /// `m.login.registration_token`: one of the configured registration tokens.
    RegistrationToken,
}

impl Stage {
    /// The stage's type string.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Dummy => "m.login.dummy",
            Stage::Password => "m.login.password",
            Stage::RegistrationToken => "m.login.registration_token",
        }
    }

    fn parse(s: &str) -> Option<Stage> {
        [Stage::Dummy, Stage::Password, Stage::RegistrationToken]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// The flows an endpoint accepts: completing every stage of any one flow suffices.
#[derive(Clone, Debug)]
pub struct UiaFlows(pub Vec<Vec<Stage>>);

impl UiaFlows {
    /// One flow of one stage.
    pub fn single(stage: Stage) -> UiaFlows {
        UiaFlows(vec![vec![stage]])
    }

    fn contains(&self, stage: Stage) -> bool {
        self.0.iter().any(|f| f.contains(&stage))
    }

    fn complete(&self, completed: &[String]) -> bool {
        self.0.iter().any(|f| {
            f.iter()
                .all(|st| completed.iter().any(|c| c == st.as_str()))
        })
    }
}

/// The stored state of one UIA session.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct UiaSession {
    completed: Vec<String>,
    user_id: Option<OwnedUserId>,
    created_ts: u64,
    /// The registration token the `m.login.registration_token` stage accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registration_token: Option<String>,
}

fn new_session_id() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

impl UsersService {
    /// Runs one round of user-interactive auth for `flows`. `user` is the authenticated
    /// user the operation is for (`None` for registration); `auth` is the request's `auth`
    /// object. `Ok(())` when a flow is complete (the session is then consumed).
    pub fn check_uia(
        &self,
        flows: &UiaFlows,
        user: Option<&UserId>,
        auth: Option<&Value>,
    ) -> Result<()> {
        self.run_uia(flows, user, auth).map(|_| ())
    }

    /// [`UsersService::check_uia`] for registration: once a flow is complete, answers the
    /// registration token its `m.login.registration_token` stage accepted, if any (the
    /// caller counts its use with [`UsersService::use_registration_token`]).
    pub fn check_registration_uia(
        &self,
        flows: &UiaFlows,
        auth: Option<&Value>,
    ) -> Result<Option<String>> {
        self.run_uia(flows, None, auth)
            .map(|session| session.registration_token)
    }

    fn run_uia(
        &self,
        flows: &UiaFlows,
        user: Option<&UserId>,
        auth: Option<&Value>,
    ) -> Result<UiaSession> {
        let auth = auth.filter(|a| !a.is_null());
        let Some(auth) = auth else {
            if rand::thread_rng().gen_ratio(1, 64) {
                self.purge_expired_uia()?;
            }
            let id = new_session_id();
            let session = UiaSession {
                completed: vec![],
                user_id: user.map(ToOwned::to_owned),
                created_ts: now_ms(),
                registration_token: None,
            };
            self.store_uia(&id, &session)?;
            return Err(uia_error(flows, &id, &session, None));
        };
        let Some(auth) = auth.as_object() else {
            return Err(Error::bad_json("auth must be an object"));
        };
        let (id, mut session) = match auth.get("session") {
            Some(Value::String(id)) => {
                let session = self
                    .storage
                    .trees
                    .uia_sessions
                    .get_json::<UiaSession>(id.as_bytes())?
                    .filter(|s| now_ms().saturating_sub(s.created_ts) < SESSION_TTL_MS)
                    .ok_or_else(|| Error::bad_request("Unknown or expired UIA session"))?;
                if session.user_id.as_deref() != user {
                    return Err(Error::forbidden("UIA session belongs to another user"));
                }
                (id.clone(), session)
            }
            Some(Value::Null) | None => (
                new_session_id(),
                UiaSession {
                    completed: vec![],
                    user_id: user.map(ToOwned::to_owned),
                    created_ts: now_ms(),
                    registration_token: None,
                },
            ),
            Some(_) => return Err(Error::bad_json("auth.session must be a string")),
        };

        let failure = match auth.get("type").and_then(Value::as_str) {
            // Only a session: the client asks where it stands.
            None => None,
            Some(kind) => match Stage::parse(kind).filter(|st| flows.contains(*st)) {
                None => Some(("M_UNRECOGNIZED", format!("Unsupported auth stage {kind}"))),
                Some(stage) => match self.verify_stage(stage, user, auth) {
                    Ok(()) => {
                        if stage == Stage::RegistrationToken {
                            session.registration_token =
                                auth.get("token").and_then(Value::as_str).map(str::to_owned);
                        }
                        if !session.completed.iter().any(|c| c == kind) {
                            session.completed.push(kind.to_owned());
                        }
                        None
                    }
                    Err(e @ Error::Matrix { .. }) => {
                        let body = e.body();
                        let errcode = match body["errcode"].as_str() {
                            Some("M_FORBIDDEN") => "M_FORBIDDEN",
                            Some("M_USER_DEACTIVATED") => "M_USER_DEACTIVATED",
                            _ => "M_INVALID_PARAM",
                        };
                        Some((
                            errcode,
                            body["error"].as_str().unwrap_or_default().to_owned(),
                        ))
                    }
                    Err(other) => return Err(other),
                },
            },
        };

        if failure.is_none() && flows.complete(&session.completed) {
            self.storage.trees.uia_sessions.remove(id.as_bytes())?;
            return Ok(session);
        }
        self.store_uia(&id, &session)?;
        Err(uia_error(flows, &id, &session, failure))
    }

    /// Forgets expired UIA sessions.
    pub fn purge_expired_uia(&self) -> Result<usize> {
        let tree = &self.storage.trees.uia_sessions;
        let now = now_ms();
        let mut expired = Vec::new();
        for entry in tree.scan_prefix(&[]) {
            let (key, value) = entry?;
            let stale = serde_json::from_slice::<UiaSession>(&value)
                .map_or(true, |s| now.saturating_sub(s.created_ts) >= SESSION_TTL_MS);
            if stale {
                expired.push(key);
            }
        }
        for key in &expired {
            tree.remove(key)?;
        }
        Ok(expired.len())
    }

    fn store_uia(&self, id: &str, session: &UiaSession) -> Result<()> {
        self.storage
            .trees
            .uia_sessions
            .insert(id.as_bytes(), &serde_json::to_vec(session)?)
    }

    fn verify_stage(
        &self,
        stage: Stage,
        user: Option<&UserId>,
        auth: &serde_json::Map<String, Value>,
    ) -> Result<()> {
        match stage {
            Stage::Dummy => Ok(()),
            Stage::RegistrationToken => {
                let token = auth
                    .get("token")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if self.registration_token_valid(token)? {
                    Ok(())
                } else {
                    Err(Error::forbidden("Invalid registration token"))
                }
            }
            Stage::Password => {
                let Some(user) = user else {
                    return Err(Error::forbidden("Password authentication needs a user"));
                };
                let claimed = auth
                    .get("identifier")
                    .and_then(|i| i.get("user"))
                    .or_else(|| auth.get("user"))
                    .and_then(Value::as_str);
                if let Some(claimed) = claimed {
                    if self.user_id_from(claimed).ok().as_deref() != Some(user) {
                        return Err(Error::forbidden(
                            "The identifier does not match the authenticated user",
                        ));
                    }
                }
                let password = auth
                    .get("password")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if self.check_password(user, password)? {
                    Ok(())
                } else {
                    Err(Error::forbidden("Invalid password"))
                }
            }
        }
    }
}

fn uia_error(
    flows: &UiaFlows,
    id: &str,
    session: &UiaSession,
    failure: Option<(&str, String)>,
) -> Error {
    let flows: Vec<Value> = flows
        .0
        .iter()
        .map(|f| json!({ "stages": f.iter().map(|s| s.as_str()).collect::<Vec<_>>() }))
        .collect();
    let mut body =
        json!({ "flows": flows, "params": {}, "session": id, "completed": session.completed });
    if let Some((errcode, error)) = failure {
        body["errcode"] = json!(errcode);
        body["error"] = json!(error);
    }
    Error::Uia(Box::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::RegistrationMode, users::test_support::service_with};

    fn uia_body(e: Error) -> Value {
        match e {
            Error::Uia(body) => *body,
            other => panic!("expected UIA, got {other:?}"),
        }
    }

    #[test]
    fn password_flow_with_retry() {
        let s = service_with(|_| {});
        let alice = s.create_user("alice", Some("pw"), false).unwrap();
        let flows = UiaFlows::single(Stage::Password);
        let body = uia_body(s.check_uia(&flows, Some(&alice), None).unwrap_err());
        assert_eq!(body["flows"], json!([{ "stages": ["m.login.password"] }]));
        assert_eq!(body["completed"], json!([]));
        assert!(body.get("errcode").is_none());
        let session = body["session"].as_str().unwrap().to_owned();

        let wrong = json!({ "type": "m.login.password", "session": session,
            "identifier": { "type": "m.id.user", "user": "alice" }, "password": "nope" });
        let body = uia_body(s.check_uia(&flows, Some(&alice), Some(&wrong)).unwrap_err());
        assert_eq!(body["errcode"], "M_FORBIDDEN");
        assert_eq!(body["session"], session);

        let right = json!({ "type": "m.login.password", "session": session, "user": "@alice:localhost", "password": "pw" });
        s.check_uia(&flows, Some(&alice), Some(&right)).unwrap();
        // The session is consumed.
        assert_eq!(
            s.check_uia(&flows, Some(&alice), Some(&right))
                .unwrap_err()
                .errcode(),
            "M_UNKNOWN"
        );

        // Another user's identifier is refused.
        let bob = s.create_user("bob", Some("pw"), false).unwrap();
        let as_bob = json!({ "type": "m.login.password", "user": "bob", "password": "pw" });
        let body = uia_body(
            s.check_uia(&flows, Some(&alice), Some(&as_bob))
                .unwrap_err(),
        );
        assert_eq!(body["errcode"], "M_FORBIDDEN");
        let _ = bob;
    }

    #[test]
    fn dummy_without_session_and_unknown_stages() {
        let s = service_with(|c| c.registration.mode = RegistrationMode::Open);
        let flows = UiaFlows::single(Stage::Dummy);
        s.check_uia(&flows, None, Some(&json!({ "type": "m.login.dummy" })))
            .unwrap();
        let body = uia_body(
            s.check_uia(&flows, None, Some(&json!({ "type": "m.login.password" })))
                .unwrap_err(),
        );
        assert_eq!(body["errcode"], "M_UNRECOGNIZED");
        assert_eq!(
            s.check_uia(&flows, None, Some(&json!({ "session": 3 })))
                .unwrap_err()
                .errcode(),
            "M_BAD_JSON"
        );
    }

    #[test]
    fn registration_token_and_multi_stage_flows() {
        let s = service_with(|c| c.registration.tokens = vec!["letmein".into()]);
        let flows = UiaFlows(vec![vec![Stage::RegistrationToken, Stage::Dummy]]);
        let body = uia_body(
            s.check_uia(
                &flows,
                None,
                Some(&json!({ "type": "m.login.registration_token", "token": "bad" })),
            )
            .unwrap_err(),
        );
        assert_eq!(body["errcode"], "M_FORBIDDEN");
        let session = body["session"].as_str().unwrap();
        let ok =
            json!({ "type": "m.login.registration_token", "token": "letmein", "session": session });
        let body = uia_body(s.check_uia(&flows, None, Some(&ok)).unwrap_err());
        assert_eq!(body["completed"], json!(["m.login.registration_token"]));
        assert!(body.get("errcode").is_none());
        s.check_uia(
            &flows,
            None,
            Some(&json!({ "type": "m.login.dummy", "session": session })),
        )
        .unwrap();
        assert!(!s.registration_token_valid("").unwrap());
    }

    #[test]
    fn expired_sessions_are_purged() {
        let s = service_with(|_| {});
        let old = UiaSession {
            completed: vec![],
            user_id: None,
            created_ts: 0,
            registration_token: None,
        };
        s.store_uia("old", &old).unwrap();
        let fresh = UiaSession {
            completed: vec![],
            user_id: None,
            created_ts: now_ms(),
            registration_token: None,
        };
        s.store_uia("fresh", &fresh).unwrap();
        let auth = json!({ "type": "m.login.dummy", "session": "old" });
        let flows = UiaFlows::single(Stage::Dummy);
        assert_eq!(
            s.check_uia(&flows, None, Some(&auth))
                .unwrap_err()
                .errcode(),
            "M_UNKNOWN"
        );
        assert_eq!(s.purge_expired_uia().unwrap(), 1);
        assert!(s.storage.trees.uia_sessions.contains(b"fresh").unwrap());
    }
}
