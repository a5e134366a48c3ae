//! OpenID tokens (for the SFU's token service and other relying parties).

use std::{sync::Arc, time::Duration};

use axum::extract::State;
use ruma::{
    api::client::account::request_openid_token, authentication::TokenType, OwnedServerName,
};

use crate::{api::ruma::Ruma, services::Services, Error, Result};

/// `POST /_matrix/client/v3/user/{userId}/openid/request_token`
pub(super) async fn request_openid_token_route(
    State(services): State<Arc<Services>>,
    req: Ruma<request_openid_token::v3::Request>,
) -> Result<request_openid_token::v3::Response> {
    let session = req.session()?;
    if req.body.user_id != session.user_id {
        return Err(Error::forbidden(
            "You may only request OpenID tokens for yourself",
        ));
    }
    let (token, ttl) = services
        .rtc
        .issue_openid_token(&session.user_id, &session.device_id)
        .await?;
    let server = OwnedServerName::try_from(services.config.server_name.as_str())
        .map_err(|e| Error::internal(format!("server name: {e}")))?;
    Ok(request_openid_token::v3::Response::new(
        token,
        TokenType::Bearer,
        server,
        Duration::from_secs(ttl),
    ))
}
