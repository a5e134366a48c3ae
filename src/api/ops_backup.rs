//! `POST /_myelin/admin/backup`: an online backup of the running server for an admin
//! (`myelin backup DIR` calls it). The answer is the backup stream described in
//! `crate::backup`: the database snapshot and the key files.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::io::ReaderStream;

use crate::{api::ruma::RawJson, services::Services, Error, Result};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router.route("/_myelin/admin/backup", post(backup))
}

/// `POST /_myelin/admin/backup`
async fn backup(State(services): State<Arc<Services>>, req: RawJson) -> Result<Response> {
    if !services.users.is_admin(&req.session.user_id)? {
        return Err(Error::forbidden("only server admins may take backups"));
    }
    let parts = services.take_backup().await?;
    tracing::info!(admin = %req.session.user_id, "backup streamed");
    let stream = futures_util::stream::iter(parts.into_iter().map(|part| {
        let header = Bytes::from(crate::backup::frame_header(part.name, part.len));
        let bytes = ReaderStream::new(tokio::fs::File::from_std(part.file));
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(header) }).chain(bytes)
    }))
    .flatten();
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}
