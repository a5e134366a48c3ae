//! Service-level tests of the E2EE key relay on the in-memory engine.

use std::sync::Arc;

use ruma::{OwnedDeviceId, OwnedUserId};

use crate::{config::Config, services::Services};

pub(crate) fn services() -> Arc<Services> {
    Services::in_memory(Config::default()).expect("services")
}

/// A user with one logged-in device.
pub(crate) fn login(s: &Services, name: &str) -> (OwnedUserId, OwnedDeviceId) {
    let user = match s.users.create_user(name, Some("pw"), false) {
        Ok(u) => u,
        Err(_) => s.users.user_id_from(name).unwrap(),
    };
    let (_, device) = s.users.create_session(&user, None, None).unwrap();
    (user, device)
}
