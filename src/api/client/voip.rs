//! `/voip/turnServer`: TURN credentials from config.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use ruma::api::client::voip::get_turn_server_info;
use sha1::Sha1;

use crate::{
    api::ruma::{RouterExt, Ruma},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router.ruma(turn_server)
}

/// The coturn REST-API credential: username `<expiry>:<user>`, password
/// `base64(HMAC-SHA1(secret, username))`.
fn turn_credentials(secret: &str, user: &str, expiry_secs: u64) -> Result<(String, String)> {
    let username = format!("{expiry_secs}:{user}");
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes())
        .map_err(|_| Error::internal("invalid TURN secret"))?;
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    Ok((username, password))
}

/// `GET /_matrix/client/v3/voip/turnServer`
async fn turn_server(
    State(services): State<Arc<Services>>,
    req: Ruma<get_turn_server_info::v3::Request>,
) -> Result<get_turn_server_info::v3::Response> {
    let session = req.session()?;
    let voip = &services.config.voip;
    if voip.turn_uris.is_empty()
        || voip.turn_shared_secret.is_empty()
        || (session.is_guest && !voip.turn_allow_guests)
    {
        // No TURN configured: Synapse answers an empty object too, and clients then use
        // only STUN/host candidates.
        return Ok(get_turn_server_info::v3::Response::new(
            String::new(),
            String::new(),
            Vec::new(),
            Duration::ZERO,
        ));
    }
    let expiry = crate::users::now_ms() / 1000 + voip.turn_ttl_secs;
    let (username, password) =
        turn_credentials(&voip.turn_shared_secret, session.user_id.as_str(), expiry)?;
    Ok(get_turn_server_info::v3::Response::new(
        username,
        password,
        voip.turn_uris.clone(),
        Duration::from_secs(voip.turn_ttl_secs),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_credentials_follow_the_coturn_scheme() {
        // base64(HMAC-SHA1("secret", "1000:@a:b")), computed independently
        let (user, pass) = turn_credentials("secret", "@a:b", 1000).unwrap();
        assert_eq!(user, "1000:@a:b");
        assert_eq!(pass, "Kzbwtcw/hPDwPPOGpnncCyMsvCw=");
    }
}
