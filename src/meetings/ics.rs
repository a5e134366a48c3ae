//! The iCalendar export of a room's scheduled meeting (RFC 5545, built with the
//! `icalendar` crate): one VEVENT with a UID stable per room, DTSTART/DTEND in UTC,
//! SUMMARY, DESCRIPTION, URL and LOCATION (the join link) and the RRULE when set.

use chrono::{TimeZone, Utc};
use icalendar::{Calendar, Component, Event, EventLike};
use ruma::{RoomId, UserId};
use sha2::{Digest, Sha256};

use super::{MeetingsService, Schedule, SCHEDULE_EVENT};
use crate::{Error, Result};

/// The UID of a room's meeting: the same for every export of that room.
fn uid(room_id: &RoomId, server_name: &str) -> String {
    let digest = hex::encode(Sha256::digest(room_id.as_str().as_bytes()));
    format!("{}@{server_name}", &digest[..32])
}

/// The calendar text of one scheduled meeting.
pub(super) fn calendar(schedule: &Schedule, uid: &str, join_url: Option<&str>) -> Result<String> {
    let time = |ms: u64| {
        i64::try_from(ms)
            .ok()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .ok_or_else(|| Error::internal("schedule time out of range"))
    };
    let mut event = Event::new();
    event
        .uid(uid)
        .summary(&schedule.title)
        .starts(time(schedule.start_ts)?)
        .ends(time(schedule.end_ts)?);
    if let Some(description) = &schedule.description {
        event.description(description);
    }
    if let Some(url) = join_url {
        event.url(url).location(url);
    }
    if let Some(rule) = &schedule.rrule {
        event.add_property("RRULE", rule);
    }
    let mut calendar = Calendar::new();
    calendar.push(event.done());
    Ok(calendar.done().to_string())
}

impl MeetingsService {
    /// `GET …/rooms/{roomId}/meeting.ics` for a member or invitee; 404 when the room has
    /// no schedule.
    pub fn meeting_ics(&self, room_id: &RoomId, user: &UserId) -> Result<String> {
        self.check_involved(room_id, user)?;
        let schedule = self
            .rooms
            .state_content(room_id, SCHEDULE_EVENT, "")?
            .and_then(|c| Schedule::parse(&c).ok().flatten())
            .ok_or_else(|| Error::not_found("This room has no scheduled meeting"))?;
        let url = self.room_link_url(room_id)?;
        calendar(
            &schedule,
            &uid(room_id, &self.config.server_name),
            url.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_vevent_in_utc_with_the_link() {
        let schedule = Schedule {
            title: "Weekly sync".into(),
            start_ts: 1_894_006_800_000,
            end_ts: 1_894_010_400_000,
            rrule: Some("FREQ=WEEKLY;BYDAY=MO".into()),
            description: Some("Agenda: all".into()),
        };
        let room = RoomId::parse("!abc:example.org").unwrap();
        let text = calendar(
            &schedule,
            &uid(&room, "example.org"),
            Some("https://m.example.org/meet/T"),
        )
        .unwrap();
        assert!(text.starts_with("BEGIN:VCALENDAR\r\n"), "{text}");
        assert!(text.contains("BEGIN:VEVENT\r\n"));
        assert!(text.contains("DTSTART:20300107T090000Z\r\n"), "{text}");
        assert!(text.contains("DTEND:20300107T100000Z\r\n"), "{text}");
        assert!(text.contains("SUMMARY:Weekly sync\r\n"));
        assert!(text.contains("URL:https://m.example.org/meet/T\r\n"));
        assert!(text.contains("LOCATION:https://m.example.org/meet/T\r\n"));
        assert!(text.contains("RRULE:FREQ=WEEKLY;BYDAY=MO\r\n"));
        assert_eq!(uid(&room, "example.org"), uid(&room, "example.org"));
        assert!(text.contains(&format!("UID:{}\r\n", uid(&room, "example.org"))));
    }
}
