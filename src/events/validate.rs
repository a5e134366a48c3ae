//! Shape checks on a new event before it is built and authorised: the spec's size limits
//! on `type` and `state_key`, and content the authorization rules would refuse as
//! "forbidden" when it is merely malformed (power levels, member state keys, join rules).
//! A client gets 400 with the errcode that names its mistake, and nothing is written.

use ruma::UserId;
use serde_json::Value;

use crate::{Error, Result};

/// Largest `type` and `state_key`, in bytes (spec: "Size limits").
pub const MAX_ID_BYTES: usize = 255;

/// Largest and smallest integers canonical JSON allows.
const MAX_SAFE_INT: i64 = (1 << 53) - 1;

/// The join rules the spec defines.
const JOIN_RULES: [&str; 6] = [
    "public",
    "knock",
    "invite",
    "private",
    "restricted",
    "knock_restricted",
];

/// Checks a new event (room versions 10 and 11: power levels are integers).
pub fn check_new_event(kind: &str, state_key: Option<&str>, content: &Value) -> Result<()> {
    if kind.is_empty() {
        return Err(Error::invalid_param("Event type must not be empty"));
    }
    if kind.len() > MAX_ID_BYTES {
        return Err(Error::invalid_param(format!(
            "Event type is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    if state_key.is_some_and(|k| k.len() > MAX_ID_BYTES) {
        return Err(Error::invalid_param(format!(
            "State key is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    if !content.is_object() {
        return Err(Error::bad_json("Event content must be a JSON object"));
    }
    match (kind, state_key) {
        ("m.room.member", key) => check_member(key, content),
        ("m.room.power_levels", _) => check_power_levels(content),
        ("m.room.join_rules", _) => check_join_rules(content),
        _ => Ok(()),
    }
}

fn check_member(state_key: Option<&str>, content: &Value) -> Result<()> {
    let key = state_key.ok_or_else(|| Error::invalid_param("m.room.member needs a state key"))?;
    UserId::parse(key).map_err(|e| {
        Error::invalid_param(format!(
            "The state key of m.room.member must be a user id: {e}"
        ))
    })?;
    match content.get("membership") {
        Some(Value::String(_)) => Ok(()),
        _ => Err(Error::bad_json(
            "m.room.member content needs a string `membership`",
        )),
    }
}

fn is_level(v: &Value) -> bool {
    v.as_i64()
        .is_some_and(|n| (-MAX_SAFE_INT..=MAX_SAFE_INT).contains(&n))
}

fn check_power_levels(content: &Value) -> Result<()> {
    for field in [
        "ban",
        "events_default",
        "invite",
        "kick",
        "redact",
        "state_default",
        "users_default",
    ] {
        if content.get(field).is_some_and(|v| !is_level(v)) {
            return Err(Error::bad_json(format!(
                "m.room.power_levels: `{field}` must be an integer"
            )));
        }
    }
    for field in ["events", "notifications", "users"] {
        let Some(map) = content.get(field) else {
            continue;
        };
        let map = map.as_object().ok_or_else(|| {
            Error::bad_json(format!("m.room.power_levels: `{field}` must be an object"))
        })?;
        for (key, level) in map {
            if !is_level(level) {
                return Err(Error::bad_json(format!(
                    "m.room.power_levels: `{field}.{key}` must be an integer"
                )));
            }
            if field == "users" && UserId::parse(key.as_str()).is_err() {
                return Err(Error::bad_json(format!(
                    "m.room.power_levels: `users` key {key:?} is not a user id"
                )));
            }
        }
    }
    Ok(())
}

fn check_join_rules(content: &Value) -> Result<()> {
    match content.get("join_rule").and_then(Value::as_str) {
        Some(rule) if JOIN_RULES.contains(&rule) => Ok(()),
        Some(rule) => Err(Error::bad_json(format!("Unknown join_rule {rule:?}"))),
        None => Err(Error::bad_json(
            "m.room.join_rules content needs a string `join_rule`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn code(kind: &str, key: Option<&str>, content: Value) -> &'static str {
        match check_new_event(kind, key, &content) {
            Ok(()) => "ok",
            Err(e) => e.errcode(),
        }
    }

    #[test]
    fn sizes_of_type_and_state_key() {
        let long = "x".repeat(256);
        assert_eq!(code(&long, None, json!({})), "M_INVALID_PARAM");
        assert_eq!(code("m.x", Some(&long), json!({})), "M_INVALID_PARAM");
        assert_eq!(
            code(&"x".repeat(255), Some(&"y".repeat(255)), json!({})),
            "ok"
        );
        assert_eq!(code("m.x", None, json!([])), "M_BAD_JSON");
    }

    #[test]
    fn malformed_state_content_is_bad_json() {
        let pl = "m.room.power_levels";
        assert_eq!(
            code(pl, Some(""), json!({"ban": 50, "users": {"@a:x": 100}})),
            "ok"
        );
        assert_eq!(code(pl, Some(""), json!({"ban": "50"})), "M_BAD_JSON");
        assert_eq!(code(pl, Some(""), json!({"ban": 1.5})), "M_BAD_JSON");
        assert_eq!(code(pl, Some(""), json!({"users": []})), "M_BAD_JSON");
        assert_eq!(
            code(pl, Some(""), json!({"users": {"nobody": 1}})),
            "M_BAD_JSON"
        );
        assert_eq!(
            code(pl, Some(""), json!({"events": {"m.x": 1e300}})),
            "M_BAD_JSON"
        );
        let jr = "m.room.join_rules";
        assert_eq!(code(jr, Some(""), json!({"join_rule": "public"})), "ok");
        assert_eq!(
            code(jr, Some(""), json!({"join_rule": "anyone"})),
            "M_BAD_JSON"
        );
        assert_eq!(code(jr, Some(""), json!({})), "M_BAD_JSON");
        let m = "m.room.member";
        assert_eq!(code(m, Some("@a:x"), json!({"membership": "join"})), "ok");
        assert_eq!(
            code(m, Some("a"), json!({"membership": "join"})),
            "M_INVALID_PARAM"
        );
        assert_eq!(
            code(m, Some("@a:x"), json!({"membership": 1})),
            "M_BAD_JSON"
        );
    }
}
