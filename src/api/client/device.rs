//! Device management: list, get, rename, delete.

use std::sync::Arc;

use axum::extract::State;
use ruma::{
    api::client::device::{
        self as ruma_device, delete_device, delete_devices, get_device, get_devices, update_device,
    },
    MilliSecondsSinceUnixEpoch, UInt,
};

use super::account::auth_json;
use crate::{
    api::ruma::{RouterExt, Ruma},
    services::Services,
    users::{Device, Stage, UiaFlows},
    Error, Result,
};

pub(super) fn routes(router: axum::Router<Arc<Services>>) -> axum::Router<Arc<Services>> {
    router
        .ruma(get_devices)
        .ruma(get_device)
        .ruma(update_device)
        .ruma(delete_device)
        .ruma(delete_devices)
}

/// Whether the caller is an application service with device management
/// (`io.element.msc4190: true`): it creates its users' devices with `PUT /devices/{id}`
/// and deletes them without user-interactive auth.
fn manages_devices<T>(services: &Services, req: &Ruma<T>) -> bool {
    req.session
        .as_ref()
        .and_then(|s| s.appservice.as_deref())
        .and_then(|id| services.appservices.by_id(id))
        .is_some_and(|reg| reg.device_management)
}

/// Deleting devices needs the password through user-interactive auth, except for an
/// appservice that manages its users' devices.
fn check_delete_auth<T>(
    services: &Services,
    req: &Ruma<T>,
    auth: Option<&ruma::api::client::uiaa::AuthData>,
) -> Result<()> {
    if manages_devices(services, req) {
        return Ok(());
    }
    services.users.check_uia(
        &UiaFlows::single(Stage::Password),
        Some(req.sender_user()?),
        auth_json(req.json_body.as_ref(), auth).as_ref(),
    )?;
    Ok(())
}

fn to_ruma(device: Device) -> ruma_device::Device {
    let mut out = ruma_device::Device::new(device.device_id);
    out.display_name = device.display_name;
    out.last_seen_ip = device.last_seen_ip;
    out.last_seen_ts = device
        .last_seen_ts
        .and_then(UInt::new)
        .map(MilliSecondsSinceUnixEpoch);
    out
}

/// `GET /_matrix/client/v3/devices`
async fn get_devices(
    State(services): State<Arc<Services>>,
    req: Ruma<get_devices::v3::Request>,
) -> Result<get_devices::v3::Response> {
    let devices = services.users.list_devices(req.sender_user()?)?;
    Ok(get_devices::v3::Response::new(
        devices.into_iter().map(to_ruma).collect(),
    ))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`
async fn get_device(
    State(services): State<Arc<Services>>,
    req: Ruma<get_device::v3::Request>,
) -> Result<get_device::v3::Response> {
    let device = services
        .users
        .device(req.sender_user()?, &req.body.device_id)?
        .ok_or_else(|| Error::not_found("Unknown device"))?;
    Ok(get_device::v3::Response::new(to_ruma(device)))
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`
async fn update_device(
    State(services): State<Arc<Services>>,
    req: Ruma<update_device::v3::Request>,
) -> Result<update_device::v3::Response> {
    let user = req.sender_user()?;
    if services.users.device(user, &req.body.device_id)?.is_none()
        && manages_devices(&services, &req)
    {
        // MSC4190: the application service creates its user's device.
        services
            .users
            .create_device(user, &req.body.device_id, req.body.display_name.clone())
            .await?;
        return Ok(update_device::v3::Response::new());
    }
    match &req.body.display_name {
        Some(name) => {
            services
                .users
                .set_device_display_name(user, &req.body.device_id, Some(name.clone()))
                .await?
        }
        None if services.users.device(user, &req.body.device_id)?.is_none() => {
            return Err(Error::not_found("Unknown device"))
        }
        None => {}
    }
    Ok(update_device::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`
async fn delete_device(
    State(services): State<Arc<Services>>,
    req: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response> {
    let user = req.sender_user()?;
    check_delete_auth(&services, &req, req.body.auth.as_ref())?;
    services
        .users
        .remove_device(user, &req.body.device_id)
        .await?;
    Ok(delete_device::v3::Response::new())
}

/// `POST /_matrix/client/v3/delete_devices`
async fn delete_devices(
    State(services): State<Arc<Services>>,
    req: Ruma<delete_devices::v3::Request>,
) -> Result<delete_devices::v3::Response> {
    let user = req.sender_user()?;
    check_delete_auth(&services, &req, req.body.auth.as_ref())?;
    services
        .users
        .remove_devices(user, &req.body.devices)
        .await?;
    Ok(delete_devices::v3::Response::new())
}
