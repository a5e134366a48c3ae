//! Synapse's media admin API, for server admins:
//! `POST /_synapse/admin/v1/media/delete?before_ts=MS[&size_gt=BYTES]` deletes the local
//! media created before `before_ts` (and larger than `size_gt`), answering
//! `{"deleted_media": [mediaId…], "total": n}`.

use std::sync::Arc;

use axum::{extract::State, routing::post, Json, Router};
use serde_json::{json, Value};

use crate::{api::ruma::RawJson, services::Services, Error, Result};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router.route("/_synapse/admin/v1/media/delete", post(delete_media))
}

/// `POST /_synapse/admin/v1/media/delete`
async fn delete_media(State(services): State<Arc<Services>>, req: RawJson) -> Result<Json<Value>> {
    if !services.users.is_admin(&req.session.user_id)? {
        return Err(Error::forbidden("You are not a server admin"));
    }
    let number = |name: &str| -> Result<Option<u64>> {
        req.query
            .get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    Error::invalid_param(format!("{name} must be a non-negative integer"))
                })
            })
            .transpose()
    };
    let before_ts = number("before_ts")?
        .ok_or_else(|| Error::missing_param("Missing integer query parameter 'before_ts'"))?;
    let size_gt = number("size_gt")?.unwrap_or(0);
    let deleted = services.media.delete_before(before_ts, size_gt).await?;
    Ok(Json(
        json!({ "total": deleted.len(), "deleted_media": deleted }),
    ))
}
