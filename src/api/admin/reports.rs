//! Admin API, reports: list, get and delete what users reported, events (Synapse's
//! `/_synapse/admin/v1/event_reports...` shapes) and rooms (`.../room_reports...`, the
//! same shapes without the event fields).

use std::sync::Arc;

use axum::{extract::State, routing::get, Json, Router};
use ruma::{OwnedRoomId, UserId};
use serde_json::{json, Value};

use super::AdminRequest;
use crate::{
    rooms::{EventReport, ReportQuery},
    services::Services,
    Error, Result,
};

pub(super) fn routes(router: Router<Arc<Services>>) -> Router<Arc<Services>> {
    router
        .route("/_synapse/admin/v1/event_reports", get(list_reports))
        .route(
            "/_synapse/admin/v1/event_reports/{report_id}",
            get(get_report).delete(delete_report),
        )
        .route("/_synapse/admin/v1/room_reports", get(list_room_reports))
        .route(
            "/_synapse/admin/v1/room_reports/{report_id}",
            get(get_room_report).delete(delete_room_report),
        )
}

/// A report with what an administrator needs to judge it: the room's name and alias
/// and the reported event's sender (and, with `with_event`, the event itself).
fn report_json(services: &Services, r: &EventReport, with_event: bool) -> Result<Value> {
    let text = |kind: &str, field: &str| -> Result<Option<String>> {
        Ok(services
            .rooms
            .state_content(&r.room_id, kind, "")?
            .and_then(|c| c.get(field).and_then(Value::as_str).map(str::to_owned)))
    };
    let mut body = json!({
        "id": r.id,
        "received_ts": r.received_ts,
        "room_id": r.room_id,
        "name": text("m.room.name", "name")?,
        "canonical_alias": text("m.room.canonical_alias", "alias")?,
        "user_id": r.user_id,
        "reason": r.reason,
    });
    let Some(event_id) = &r.event_id else {
        // A room report.
        return Ok(body);
    };
    let event = services.rooms.get_pdu(event_id)?;
    body["event_id"] = json!(event_id);
    body["score"] = json!(r.score);
    body["sender"] = json!(event.as_ref().map(|e| e.sender.to_string()));
    if with_event {
        body["event_json"] = event.map_or(Value::Null, |e| e.to_client_event());
    }
    Ok(body)
}

fn report_id(req: &AdminRequest) -> Result<u64> {
    req.text_param(0)?
        .parse()
        .map_err(|_| Error::invalid_param("The report id must be a non-negative integer"))
}

/// `GET /_synapse/admin/v1/event_reports` (`from`, `limit`, `dir` (default `b`: newest
/// first), `room_id`, `user_id`)
async fn list_reports(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    list(&services, &req, false)
}

/// `GET /_synapse/admin/v1/room_reports` (the same parameters)
async fn list_room_reports(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    list(&services, &req, true)
}

fn list(services: &Services, req: &AdminRequest, rooms: bool) -> Result<Json<Value>> {
    let forwards = match req.query("dir") {
        None | Some("b") => false,
        Some("f") => true,
        Some(_) => return Err(Error::invalid_param("dir must be f or b")),
    };
    let query = ReportQuery {
        room_id: req
            .query("room_id")
            .map(|r| {
                OwnedRoomId::try_from(r)
                    .map_err(|e| Error::invalid_param(format!("invalid room_id: {e}")))
            })
            .transpose()?,
        user_id: req
            .query("user_id")
            .map(|u| {
                UserId::parse(u).map_err(|e| Error::invalid_param(format!("invalid user_id: {e}")))
            })
            .transpose()?,
        forwards,
        rooms,
    };
    let reports = services.rooms.list_event_reports(&query)?;
    let total = reports.len();
    let (page, next) = req.page(reports)?;
    let mut body = json!({
        (if rooms { "room_reports" } else { "event_reports" }): page
            .iter()
            .map(|r| report_json(services, r, false))
            .collect::<Result<Vec<_>>>()?,
        "total": total,
    });
    if let Some(next) = next {
        body["next_token"] = json!(next);
    }
    Ok(Json(body))
}

/// `GET /_synapse/admin/v1/event_reports/{reportId}`
async fn get_report(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let report = services.rooms.event_report(report_id(&req)?, false)?;
    Ok(Json(report_json(&services, &report, true)?))
}

/// `GET /_synapse/admin/v1/room_reports/{reportId}`
async fn get_room_report(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    let report = services.rooms.event_report(report_id(&req)?, true)?;
    Ok(Json(report_json(&services, &report, true)?))
}

/// `DELETE /_synapse/admin/v1/room_reports/{reportId}`
async fn delete_room_report(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    services
        .rooms
        .delete_event_report(report_id(&req)?, true)
        .await?;
    Ok(Json(json!({})))
}

/// `DELETE /_synapse/admin/v1/event_reports/{reportId}`
async fn delete_report(
    State(services): State<Arc<Services>>,
    req: AdminRequest,
) -> Result<Json<Value>> {
    services
        .rooms
        .delete_event_report(report_id(&req)?, false)
        .await?;
    Ok(Json(json!({})))
}
