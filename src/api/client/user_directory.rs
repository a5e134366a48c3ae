//! `POST /_matrix/client/v3/user_directory/search`: users who share a room with the
//! searcher, plus members of rooms in the public directory (what Synapse searches by
//! default), matched on user id and display name.

use std::sync::Arc;

use axum::{extract::State, Router};
use ruma::api::client::user_directory::search_users;

use crate::{
    api::ruma::{RouterExt, Ruma},
    services::Services,
    Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router.ruma(search)
}

/// Largest page a search may ask for.
const MAX_LIMIT: usize = 100;

async fn search(
    State(services): State<Arc<Services>>,
    req: Ruma<search_users::v3::Request>,
) -> Result<search_users::v3::Response> {
    let user = req.sender_user()?;
    let term = req.body.search_term.to_lowercase();
    let limit = (u64::from(req.body.limit) as usize).clamp(1, MAX_LIMIT);
    let candidates = services.rooms.visible_users(user)?;
    let mut results = Vec::new();
    let mut limited = false;
    for candidate in candidates {
        let (displayname, avatar_url) = services.users.profile(&candidate)?;
        let matches = candidate.as_str().to_lowercase().contains(&term)
            || displayname
                .as_deref()
                .is_some_and(|d| d.to_lowercase().contains(&term));
        if !matches {
            continue;
        }
        if results.len() == limit {
            limited = true;
            break;
        }
        let mut found = search_users::v3::User::new(candidate.clone());
        found.display_name = displayname;
        found.avatar_url = avatar_url.map(Into::into);
        results.push(found);
    }
    Ok(search_users::v3::Response::new(results, limited))
}
