//! Dehydrated devices (MSC3814) under
//! `/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`.

use std::sync::Arc;

use axum::{extract::State, Router};
use ruma::api::client::dehydrated_device::{
    delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device,
};

use super::keys::{raw_json, raw_map};
use crate::{
    api::ruma::{raw, RouterExt, Ruma},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .ruma(put_route)
        .ruma(get_route)
        .ruma(delete_route)
        .ruma(events_route)
}

/// `PUT /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`: stores the
/// device (replacing the previous one) with its device, one-time and fallback keys.
async fn put_route(
    State(services): State<Arc<Services>>,
    req: Ruma<put_dehydrated_device::unstable::Request>,
) -> Result<put_dehydrated_device::unstable::Response> {
    let user = req.sender_user()?;
    let b = &req.body;
    let device_keys = raw_json(&b.device_keys)?;
    let one_time_keys = raw_map(&b.one_time_keys)?;
    let fallback_keys = raw_map(&b.fallback_keys)?;
    services
        .e2ee
        .put_dehydrated_device(
            user,
            &b.device_id,
            b.initial_device_display_name.clone(),
            raw_json(&b.device_data)?,
            &device_keys,
            &one_time_keys,
            &fallback_keys,
        )
        .await?;
    Ok(put_dehydrated_device::unstable::Response::new(
        b.device_id.clone(),
    ))
}

/// `GET …/dehydrated_device`: the device id and data (404 `M_NOT_FOUND` without one).
async fn get_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_dehydrated_device::unstable::Request>,
) -> Result<get_dehydrated_device::unstable::Response> {
    let device = services
        .users
        .dehydrated_device(req.sender_user()?)?
        .ok_or_else(|| Error::not_found("No dehydrated device"))?;
    let data = device.dehydrated.unwrap_or_default();
    Ok(get_dehydrated_device::unstable::Response::new(
        device.device_id,
        raw(&data)?,
    ))
}

/// `DELETE …/dehydrated_device`
async fn delete_route(
    State(services): State<Arc<Services>>,
    req: Ruma<delete_dehydrated_device::unstable::Request>,
) -> Result<delete_dehydrated_device::unstable::Response> {
    let device_id = services
        .users
        .delete_dehydrated_device(req.sender_user()?)
        .await?;
    Ok(delete_dehydrated_device::unstable::Response::new(device_id))
}

/// `POST …/dehydrated_device/{deviceId}/events`: the to-device messages queued for the
/// user's dehydrated device, in pages; `next_batch` from the previous page acknowledges
/// (deletes) what it returned. 403 for any other device.
async fn events_route(
    State(services): State<Arc<Services>>,
    req: Ruma<get_events::unstable::Request>,
) -> Result<get_events::unstable::Response> {
    let user = req.sender_user()?;
    let b = &req.body;
    let ours = services
        .users
        .dehydrated_device(user)?
        .is_some_and(|d| d.device_id == b.device_id);
    if !ours {
        return Err(Error::forbidden(
            "You may only fetch events for your own dehydrated device",
        ));
    }
    let since = b
        .next_batch
        .as_deref()
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| Error::invalid_param("invalid next_batch"))
        })
        .transpose()?;
    let upto = services.e2ee.current_pos();
    let batch = services
        .e2ee
        .to_device_for_sync(user, &b.device_id, since, upto)?;
    let next = batch.limited_at.unwrap_or(upto.max(since.unwrap_or(0)));
    let mut res =
        get_events::unstable::Response::new(batch.events.iter().map(raw).collect::<Result<_>>()?);
    res.next_batch = Some(next.to_string());
    Ok(res)
}
