//! Reports: users report an event they can see (`POST /rooms/{roomId}/report/{eventId}`)
//! or a room (`POST /rooms/{roomId}/report`, spec v1.13); administrators list, read and
//! delete them. Both kinds are kept in the `event_reports` tree under one sequence of
//! increasing ids; a room report is one without an event.

use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use super::RoomsService;
use crate::{storage::keys, Error, Result};

/// One stored report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventReport {
    /// The report's id (the tree key; filled in when read).
    #[serde(skip)]
    pub id: u64,
    /// The room of the reported event.
    pub room_id: OwnedRoomId,
    /// The reported event; none for a report of the whole room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<OwnedEventId>,
    /// Who reported it.
    pub user_id: OwnedUserId,
    /// The reporter's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The reporter's score (-100 most offensive to 0), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<i64>,
    /// When it was received, ms since the epoch.
    pub received_ts: u64,
}

/// Longest accepted reason, in bytes.
const MAX_REASON_LEN: usize = 4096;

/// Which reports a listing returns.
#[derive(Clone, Debug, Default)]
pub struct ReportQuery {
    /// Only reports about this room.
    pub room_id: Option<OwnedRoomId>,
    /// Only reports by this user.
    pub user_id: Option<OwnedUserId>,
    /// Oldest first (`dir=f`); newest first by default.
    pub forwards: bool,
    /// Room reports instead of event reports.
    pub rooms: bool,
}

fn report_key(id: u64) -> Vec<u8> {
    keys::KeyBuilder::new().u64(id).build()
}

impl RoomsService {
    /// Records `user`'s report of an event they can see; 404 `M_NOT_FOUND` when the
    /// event is not in the room or hidden from them (whether it exists is not revealed);
    /// durable on return.
    pub async fn report_event(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        user: &UserId,
        reason: Option<String>,
        score: Option<i64>,
    ) -> Result<u64> {
        check_reason(reason.as_deref())?;
        if score.is_some_and(|s| !(-100..=0).contains(&s)) {
            return Err(Error::invalid_param("score must be between -100 and 0"));
        }
        if !self.exists(room_id)? {
            return Err(Error::not_found("Event not found"));
        }
        match self.visible_event(room_id, user, event_id) {
            Ok(_) => {}
            Err(Error::Matrix { errcode, .. }) if errcode != "M_UNKNOWN" => {
                return Err(Error::not_found("Event not found"))
            }
            Err(other) => return Err(other),
        }
        let id = self.store_report(EventReport {
            id: 0,
            room_id: room_id.to_owned(),
            event_id: Some(event_id.to_owned()),
            user_id: user.to_owned(),
            reason,
            score,
            received_ts: u64::from(ruma::MilliSecondsSinceUnixEpoch::now().0),
        })?;
        tracing::info!(report = id, room = %room_id, event = %event_id, "event reported");
        self.storage.durable().await?;
        Ok(id)
    }

    /// Records `user`'s report of a room (as Synapse: any existing room, member or not;
    /// 404 `M_NOT_FOUND` for an unknown one); durable on return.
    pub async fn report_room(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: String,
    ) -> Result<u64> {
        check_reason(Some(&reason))?;
        if !self.exists(room_id)? {
            return Err(Error::not_found("Room not found"));
        }
        let id = self.store_report(EventReport {
            id: 0,
            room_id: room_id.to_owned(),
            event_id: None,
            user_id: user.to_owned(),
            reason: Some(reason),
            score: None,
            received_ts: u64::from(ruma::MilliSecondsSinceUnixEpoch::now().0),
        })?;
        tracing::info!(report = id, room = %room_id, "room reported");
        self.storage.durable().await?;
        Ok(id)
    }

    /// Stores a report under the next id.
    fn store_report(&self, report: EventReport) -> Result<u64> {
        let tree = &self.storage.trees.event_reports;
        let value = serde_json::to_vec(&report)?;
        // Ids are the last one plus one; a concurrent report that took it makes us retry.
        loop {
            let next = tree
                .last()?
                .and_then(|(k, _)| keys::leading_u64(&k))
                .unwrap_or(0)
                + 1;
            if tree.compare_and_swap(&report_key(next), None, Some(value.clone()))? {
                return Ok(next);
            }
        }
    }

    /// Every report matching `query`.
    pub fn list_event_reports(&self, query: &ReportQuery) -> Result<Vec<EventReport>> {
        let mut out = Vec::new();
        for entry in self
            .storage
            .trees
            .event_reports
            .scan_prefix_dir(&[], !query.forwards)
        {
            let (key, value) = entry?;
            let mut report: EventReport = serde_json::from_slice(&value)?;
            report.id = keys::leading_u64(&key).unwrap_or(0);
            if report.event_id.is_none() != query.rooms
                || query.room_id.as_ref().is_some_and(|r| *r != report.room_id)
                || query.user_id.as_ref().is_some_and(|u| *u != report.user_id)
            {
                continue;
            }
            out.push(report);
        }
        Ok(out)
    }

    /// One event report (`rooms`: room report) (404 `M_NOT_FOUND`).
    pub fn event_report(&self, id: u64, rooms: bool) -> Result<EventReport> {
        let report: Option<EventReport> =
            self.storage.trees.event_reports.get_json(&report_key(id))?;
        report
            .filter(|r| r.event_id.is_none() == rooms)
            .map(|r| EventReport { id, ..r })
            .ok_or_else(|| Error::not_found("Report not found"))
    }

    /// Deletes an event report (`rooms`: a room report) (404 `M_NOT_FOUND` when there is
    /// none); durable on return.
    pub async fn delete_event_report(&self, id: u64, rooms: bool) -> Result<()> {
        self.event_report(id, rooms)?;
        self.storage.trees.event_reports.remove(&report_key(id))?;
        self.storage.durable().await
    }
}

fn check_reason(reason: Option<&str>) -> Result<()> {
    if reason.is_some_and(|r| r.len() > MAX_REASON_LEN) {
        return Err(Error::invalid_param(format!(
            "reason is longer than {MAX_REASON_LEN} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ruma::UserId;

    use crate::rooms::{test_support::room_with_message, ReportQuery};

    #[tokio::test]
    async fn reports_get_increasing_ids_and_are_filtered() {
        let (s, alice, room, event) = room_with_message().await;
        let first = s
            .rooms
            .report_event(&room, &event, &alice, None, Some(-5))
            .await
            .unwrap();
        let second = s
            .rooms
            .report_event(&room, &event, &alice, Some("again".into()), None)
            .await
            .unwrap();
        assert_eq!((first, second), (1, 2));
        let newest_first: Vec<u64> = s
            .rooms
            .list_event_reports(&ReportQuery::default())
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(newest_first, [2, 1]);
        let by_bob = ReportQuery {
            user_id: Some(UserId::parse("@bob:localhost").unwrap()),
            ..ReportQuery::default()
        };
        assert!(s.rooms.list_event_reports(&by_bob).unwrap().is_empty());
        assert_eq!(
            s.rooms.event_report(2, false).unwrap().reason.as_deref(),
            Some("again")
        );
        s.rooms.delete_event_report(1, false).await.unwrap();
        assert_eq!(
            s.rooms.event_report(1, false).unwrap_err().errcode(),
            "M_NOT_FOUND"
        );
        assert_eq!(
            s.rooms
                .report_event(&room, &event, &alice, None, Some(1))
                .await
                .unwrap_err()
                .errcode(),
            "M_INVALID_PARAM"
        );
        // A room report: listed apart from event reports, with its own id after theirs.
        let room_report = s
            .rooms
            .report_room(&room, &alice, "spam".into())
            .await
            .unwrap();
        assert_eq!(room_report, 3);
        let rooms = ReportQuery {
            rooms: true,
            ..ReportQuery::default()
        };
        let listed = s.rooms.list_event_reports(&rooms).unwrap();
        assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), [3]);
        assert_eq!(listed[0].event_id, None);
        assert_eq!(
            s.rooms
                .list_event_reports(&ReportQuery::default())
                .unwrap()
                .len(),
            1
        );
        assert!(s.rooms.event_report(3, false).is_err());
        assert!(s.rooms.event_report(2, true).is_err());
        s.rooms.delete_event_report(3, true).await.unwrap();
        assert!(s.rooms.list_event_reports(&rooms).unwrap().is_empty());
    }
}
