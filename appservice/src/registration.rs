//! A registration file (the spec's "Registration" YAML), its validation and namespace
//! matching.
//!
//! Namespace regexes are anchored at the start of the value, as Synapse does: `@_irc_.*`
//! matches `@_irc_alice:example.org`, and a registration that wants an exact match writes
//! its own `$`.

use std::path::Path;

use regex::Regex;
use serde::Deserialize;

/// A registration refused: which file, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct RegistrationError {
    /// The registration file (as given).
    pub file: String,
    /// The field at fault (`namespaces.users[0].regex`, `as_token`, …).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl RegistrationError {
    fn new(file: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        RegistrationError {
            file: file.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Which namespace a value is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceKind {
    /// User ids.
    Users,
    /// Room aliases.
    Aliases,
    /// Room ids.
    Rooms,
}

impl NamespaceKind {
    fn field(self) -> &'static str {
        match self {
            NamespaceKind::Users => "users",
            NamespaceKind::Aliases => "aliases",
            NamespaceKind::Rooms => "rooms",
        }
    }
}

/// One namespace entry: a regex and whether the appservice claims it exclusively.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// The regex as written in the file.
    pub regex: String,
    /// Whether nobody else may own values inside it.
    pub exclusive: bool,
    compiled: Regex,
}

impl Namespace {
    /// Whether `value` is inside this namespace.
    pub fn is_match(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }
}

/// The three namespace lists of a registration.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    /// User ids.
    pub users: Vec<Namespace>,
    /// Room aliases.
    pub aliases: Vec<Namespace>,
    /// Room ids.
    pub rooms: Vec<Namespace>,
}

impl Namespaces {
    /// The list of one kind.
    pub fn of(&self, kind: NamespaceKind) -> &[Namespace] {
        match kind {
            NamespaceKind::Users => &self.users,
            NamespaceKind::Aliases => &self.aliases,
            NamespaceKind::Rooms => &self.rooms,
        }
    }
}

/// A validated registration.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The file it was read from (for messages).
    pub file: String,
    /// The appservice's unique id.
    pub id: String,
    /// Where the homeserver reaches the appservice; `None` when it receives nothing.
    pub url: Option<String>,
    /// The token the appservice authenticates with.
    pub as_token: String,
    /// The token the homeserver authenticates with towards the appservice.
    pub hs_token: String,
    /// Localpart of the appservice's own user.
    pub sender_localpart: String,
    /// Users, aliases and rooms it is interested in.
    pub namespaces: Namespaces,
    /// Whether its requests are rate limited (default true).
    pub rate_limited: bool,
    /// Third-party protocols it bridges.
    pub protocols: Vec<String>,
    /// Whether it receives ephemeral events (MSC2409).
    pub receive_ephemeral: bool,
    /// Whether it manages its users' devices itself (MSC4190).
    pub device_management: bool,
    /// Whether it does end-to-end encryption for its users (MSC3202,
    /// `org.matrix.msc3202`): to-device messages for them, device-list changes and key
    /// counts come in its transactions.
    pub msc3202: bool,
}

#[derive(Deserialize)]
struct RawNamespace {
    regex: Option<String>,
    #[serde(default)]
    exclusive: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawNamespaces {
    users: Vec<RawNamespace>,
    aliases: Vec<RawNamespace>,
    rooms: Vec<RawNamespace>,
}

#[derive(Deserialize)]
struct RawRegistration {
    id: Option<String>,
    #[serde(default)]
    url: Option<String>,
    as_token: Option<String>,
    hs_token: Option<String>,
    sender_localpart: Option<String>,
    #[serde(default)]
    namespaces: RawNamespaces,
    rate_limited: Option<bool>,
    #[serde(default)]
    protocols: Option<Vec<String>>,
    receive_ephemeral: Option<bool>,
    #[serde(rename = "de.sorunome.msc2409.push_ephemeral")]
    push_ephemeral: Option<bool>,
    #[serde(rename = "io.element.msc4190")]
    msc4190: Option<bool>,
    #[serde(rename = "org.matrix.msc3202")]
    msc3202: Option<bool>,
}

fn required(file: &str, field: &str, value: Option<String>) -> Result<String, RegistrationError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        Some(_) => Err(RegistrationError::new(file, field, "must not be empty")),
        None => Err(RegistrationError::new(file, field, "is missing")),
    }
}

fn valid_localpart(localpart: &str) -> bool {
    !localpart.is_empty()
        && localpart
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/+".contains(&b))
}

fn compile(
    file: &str,
    kind: NamespaceKind,
    raw: Vec<RawNamespace>,
) -> Result<Vec<Namespace>, RegistrationError> {
    raw.into_iter()
        .enumerate()
        .map(|(i, ns)| {
            let field = format!("namespaces.{}[{i}].regex", kind.field());
            let regex = required(file, &field, ns.regex)?;
            let compiled = Regex::new(&format!("^(?:{regex})"))
                .map_err(|e| RegistrationError::new(file, &field, format!("invalid regex: {e}")))?;
            Ok(Namespace {
                regex,
                exclusive: ns.exclusive,
                compiled,
            })
        })
        .collect()
}

impl Registration {
    /// Reads and validates one registration file.
    pub fn from_file(path: &Path) -> Result<Registration, RegistrationError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| RegistrationError::new(&file, "(file)", format!("cannot read: {e}")))?;
        Registration::from_yaml(&file, &text)
    }

    /// Parses and validates one registration; `file` names it in errors.
    pub fn from_yaml(file: &str, text: &str) -> Result<Registration, RegistrationError> {
        let raw: RawRegistration = serde_norway::from_str(text).map_err(|e| {
            let field = e
                .location()
                .map(|l| format!("(line {}, column {})", l.line(), l.column()))
                .unwrap_or_else(|| "(document)".to_owned());
            RegistrationError::new(file, field, format!("not a valid registration: {e}"))
        })?;
        let id = required(file, "id", raw.id)?;
        let as_token = required(file, "as_token", raw.as_token)?;
        let hs_token = required(file, "hs_token", raw.hs_token)?;
        if as_token == hs_token {
            return Err(RegistrationError::new(
                file,
                "hs_token",
                "must differ from as_token",
            ));
        }
        let sender_localpart = required(file, "sender_localpart", raw.sender_localpart)?;
        if !valid_localpart(&sender_localpart) {
            return Err(RegistrationError::new(
                file,
                "sender_localpart",
                format!("{sender_localpart:?} is not a valid user localpart"),
            ));
        }
        let url = match raw.url {
            None => None,
            Some(u) if u.is_empty() || u == "null" => None,
            Some(u) => {
                let rest = u
                    .strip_prefix("http://")
                    .or_else(|| u.strip_prefix("https://"));
                match rest {
                    Some(host) if !host.is_empty() && !host.starts_with('/') => {
                        Some(u.trim_end_matches('/').to_owned())
                    }
                    _ => {
                        return Err(RegistrationError::new(
                            file,
                            "url",
                            format!("{u:?} is not an http(s) URL (use null for none)"),
                        ))
                    }
                }
            }
        };
        let namespaces = Namespaces {
            users: compile(file, NamespaceKind::Users, raw.namespaces.users)?,
            aliases: compile(file, NamespaceKind::Aliases, raw.namespaces.aliases)?,
            rooms: compile(file, NamespaceKind::Rooms, raw.namespaces.rooms)?,
        };
        Ok(Registration {
            file: file.to_owned(),
            id,
            url,
            as_token,
            hs_token,
            sender_localpart,
            namespaces,
            rate_limited: raw.rate_limited.unwrap_or(true),
            protocols: raw.protocols.unwrap_or_default(),
            receive_ephemeral: raw
                .receive_ephemeral
                .or(raw.push_ephemeral)
                .unwrap_or(false),
            device_management: raw.msc4190.unwrap_or(false),
            msc3202: raw.msc3202.unwrap_or(false),
        })
    }

    /// The appservice's own user id on `server_name`.
    pub fn sender(&self, server_name: &str) -> String {
        format!("@{}:{server_name}", self.sender_localpart)
    }

    /// Whether `value` is inside one of the namespaces of `kind`.
    pub fn matches(&self, kind: NamespaceKind, value: &str) -> bool {
        self.namespaces.of(kind).iter().any(|ns| ns.is_match(value))
    }

    /// Whether `value` is inside an exclusive namespace of `kind`.
    pub fn matches_exclusive(&self, kind: NamespaceKind, value: &str) -> bool {
        self.namespaces
            .of(kind)
            .iter()
            .any(|ns| ns.exclusive && ns.is_match(value))
    }

    /// Whether `user_id` is the appservice's own user or inside one of its exclusive user
    /// namespaces: the users whose to-device messages only it receives (MSC3202).
    pub fn owns_exclusively(&self, user_id: &str, server_name: &str) -> bool {
        user_id == self.sender(server_name) || self.matches_exclusive(NamespaceKind::Users, user_id)
    }

    /// Whether the appservice may act as `user_id`: its own user or one of its namespace.
    pub fn owns_user(&self, user_id: &str, server_name: &str) -> bool {
        user_id == self.sender(server_name) || self.matches(NamespaceKind::Users, user_id)
    }
}

/// Checks registrations against each other: unique ids and tokens (no token used twice,
/// as either kind), no exclusive namespace claimed by two appservices (same regex, or
/// one appservice's own user inside another's exclusive user namespace).
pub fn validate_set(regs: &[Registration], server_name: &str) -> Result<(), RegistrationError> {
    for (i, b) in regs.iter().enumerate() {
        for a in &regs[..i] {
            if a.id == b.id {
                return Err(RegistrationError::new(
                    &b.file,
                    "id",
                    format!("{:?} is already the id of {}", b.id, a.file),
                ));
            }
            for (field, token) in [("as_token", &b.as_token), ("hs_token", &b.hs_token)] {
                if token == &a.as_token || token == &a.hs_token {
                    return Err(RegistrationError::new(
                        &b.file,
                        field,
                        format!("is already a token of {}", a.file),
                    ));
                }
            }
            if a.sender_localpart == b.sender_localpart {
                return Err(RegistrationError::new(
                    &b.file,
                    "sender_localpart",
                    format!("is already the sender of {}", a.file),
                ));
            }
            for kind in [
                NamespaceKind::Users,
                NamespaceKind::Aliases,
                NamespaceKind::Rooms,
            ] {
                for (j, ns) in b.namespaces.of(kind).iter().enumerate() {
                    let clash =
                        a.namespaces.of(kind).iter().any(|other| {
                            other.regex == ns.regex && (other.exclusive || ns.exclusive)
                        });
                    if clash {
                        return Err(RegistrationError::new(
                            &b.file,
                            format!("namespaces.{}[{j}].regex", kind.field()),
                            format!(
                                "{:?} overlaps an exclusive namespace of {}",
                                ns.regex, a.file
                            ),
                        ));
                    }
                }
            }
            for (x, y) in [(a, b), (b, a)] {
                if y.matches_exclusive(NamespaceKind::Users, &x.sender(server_name)) {
                    return Err(RegistrationError::new(
                        &b.file,
                        "namespaces.users",
                        format!(
                            "the exclusive user namespace of {} contains {}, the sender of {}",
                            y.file,
                            x.sender(server_name),
                            x.file
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r##"
id: irc
url: "http://127.0.0.1:9000/"
as_token: as_secret
hs_token: hs_secret
sender_localpart: _irc_bot
namespaces:
  users:
    - exclusive: true
      regex: "@_irc_.*:example\\.org"
  aliases:
    - exclusive: false
      regex: "#_irc_.*"
  rooms: []
rate_limited: false
protocols: ["irc"]
de.sorunome.msc2409.push_ephemeral: true
io.element.msc4190: true
org.matrix.msc3202: true
"##;

    fn good() -> Registration {
        Registration::from_yaml("irc.yaml", GOOD).unwrap()
    }

    fn err(text: &str) -> RegistrationError {
        Registration::from_yaml("x.yaml", text).unwrap_err()
    }

    #[test]
    fn parses_every_field() {
        let r = good();
        assert_eq!(r.id, "irc");
        assert_eq!(r.url.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(r.as_token, "as_secret");
        assert_eq!(r.hs_token, "hs_secret");
        assert_eq!(r.sender("example.org"), "@_irc_bot:example.org");
        assert!(!r.rate_limited);
        assert_eq!(r.protocols, vec!["irc".to_owned()]);
        assert!(r.receive_ephemeral);
        assert!(r.device_management);
        assert!(r.msc3202);
        assert!(r.namespaces.users[0].exclusive);
        assert!(!r.namespaces.aliases[0].exclusive);
    }

    #[test]
    fn exclusive_ownership_covers_the_sender_and_exclusive_namespaces_only() {
        let r = Registration::from_yaml(
            "a.yaml",
            "id: a\nas_token: x\nhs_token: y\nsender_localpart: bot\nnamespaces:\n  users:\n\
             \x20   - {exclusive: true, regex: \"@a_.*\"}\n    - {exclusive: false, regex: \"@shared_.*\"}\n",
        )
        .unwrap();
        assert!(r.owns_exclusively("@bot:hs", "hs"));
        assert!(r.owns_exclusively("@a_x:hs", "hs"));
        assert!(!r.owns_exclusively("@shared_x:hs", "hs"));
        assert!(r.owns_user("@shared_x:hs", "hs"));
        assert!(!r.owns_exclusively("@other:hs", "hs"));
    }

    #[test]
    fn defaults_and_null_url() {
        let r = Registration::from_yaml(
            "a.yaml",
            "id: a\nurl: null\nas_token: x\nhs_token: y\nsender_localpart: bot\nnamespaces: {}\n",
        )
        .unwrap();
        assert_eq!(r.url, None);
        assert!(r.rate_limited);
        assert!(!r.receive_ephemeral);
        assert!(!r.device_management);
        assert!(!r.msc3202);
        assert!(r.protocols.is_empty());
        let r = Registration::from_yaml(
            "a.yaml",
            "id: a\nas_token: x\nhs_token: y\nsender_localpart: bot\nreceive_ephemeral: true\n",
        )
        .unwrap();
        assert!(r.receive_ephemeral);
    }

    #[test]
    fn namespace_matching_is_anchored_at_the_start() {
        let r = good();
        assert!(r.matches(NamespaceKind::Users, "@_irc_alice:example.org"));
        assert!(!r.matches(NamespaceKind::Users, "@alice:example.org"));
        assert!(!r.matches(NamespaceKind::Users, "@x_@_irc_alice:example.org"));
        assert!(r.matches_exclusive(NamespaceKind::Users, "@_irc_bob:example.org"));
        assert!(r.matches(NamespaceKind::Aliases, "#_irc_chan:example.org"));
        assert!(!r.matches_exclusive(NamespaceKind::Aliases, "#_irc_chan:example.org"));
        assert!(!r.matches(NamespaceKind::Rooms, "!abc:example.org"));
        assert!(r.owns_user("@_irc_bot:example.org", "example.org"));
        assert!(!r.owns_user("@_irc_bot:other.org", "example.org"));
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let e = err(&GOOD.replace("@_irc_.*:example", "@_irc_(.*:example"));
        assert_eq!(e.file, "x.yaml");
        assert_eq!(e.field, "namespaces.users[0].regex");
        assert!(e.message.starts_with("invalid regex"), "{e}");
        assert!(e
            .to_string()
            .starts_with("x.yaml: namespaces.users[0].regex: "));
        assert_eq!(err(&GOOD.replace("id: irc\n", "")).field, "id");
        assert_eq!(err(&GOOD.replace("as_secret", "\"\"")).field, "as_token");
        assert_eq!(
            err(&GOOD.replace("hs_secret", "as_secret")).field,
            "hs_token"
        );
        assert_eq!(
            err(&GOOD.replace("_irc_bot", "Bad Bot")).field,
            "sender_localpart"
        );
        assert_eq!(err(&GOOD.replace("http://127", "ftp://127")).field, "url");
        let e = err("id: [unclosed");
        assert!(e.field.starts_with("(line"), "{e}");
    }

    #[test]
    fn set_refuses_duplicates_and_exclusive_overlaps() {
        let a = good();
        let with = |from: &str, to: &str| {
            Registration::from_yaml("b.yaml", &GOOD.replace(from, to)).unwrap()
        };
        let distinct = |text: &str| {
            text.replace("id: irc", "id: b")
                .replace("as_secret", "as_b")
                .replace("hs_secret", "hs_b")
                .replace("_irc_bot", "b_bot")
        };
        let b = Registration::from_yaml("b.yaml", &distinct(GOOD)).unwrap();
        // Same exclusive user regex.
        let e = validate_set(&[a.clone(), b], "example.org").unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.field.as_str()),
            ("b.yaml", "namespaces.users[0].regex")
        );
        // Different namespaces: fine.
        let c = Registration::from_yaml(
            "c.yaml",
            &distinct(GOOD)
                .replace("@_irc_.*", "@_slack_.*")
                .replace("#_irc_", "#_slack_"),
        )
        .unwrap();
        validate_set(&[a.clone(), c.clone()], "example.org").unwrap();
        // Duplicate id, tokens reused across kinds.
        let dup_id = with("as_secret", "as_other");
        let e = validate_set(&[a.clone(), dup_id], "example.org").unwrap_err();
        assert_eq!(e.field, "id");
        let reuse = Registration::from_yaml(
            "d.yaml",
            &distinct(GOOD)
                .replace("@_irc_.*", "@_d_.*")
                .replace("#_irc_", "#_d_")
                .replace("as_b", "hs_secret"),
        )
        .unwrap();
        let e = validate_set(&[a.clone(), reuse], "example.org").unwrap_err();
        assert_eq!((e.file.as_str(), e.field.as_str()), ("d.yaml", "as_token"));
        // One appservice's sender inside another's exclusive namespace.
        let squat = Registration::from_yaml(
            "e.yaml",
            &distinct(GOOD)
                .replace("@_irc_.*", "@_e_.*")
                .replace("#_irc_", "#_e_")
                .replace("b_bot", "_irc_squat"),
        )
        .unwrap();
        let e = validate_set(&[a, c, squat], "example.org").unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.field.as_str()),
            ("e.yaml", "namespaces.users")
        );
    }
}
