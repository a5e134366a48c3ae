//! Scheduled meetings: the `io.myelin.meeting.schedule` state event (empty state key)
//! `{"title", "start_ts", "end_ts", "rrule"?, "description"?}` — times in milliseconds
//! since the epoch, `rrule` an RFC 5545 RRULE value (`FREQ=WEEKLY;BYDAY=MO`) repeating
//! the meeting from `start_ts`. Moderators set it (the room's `state_default`); the
//! [`SchedulePolicy`] refuses a malformed one with 400 before anything is written. An
//! empty content (`{}`) clears the schedule.

use chrono::{DateTime, TimeZone, Utc};
use rrule::{RRuleSet, Tz};
use serde_json::Value;

use crate::{
    events::Pdu,
    rooms::{RoomGuard, RoomPolicy, RoomRecord, RoomsService},
    Error, Result,
};

/// The state event type of a room's meeting schedule.
pub const SCHEDULE_EVENT: &str = "io.myelin.meeting.schedule";

/// Longest accepted title, description and RRULE, in bytes.
const MAX_TITLE: usize = 256;
const MAX_DESCRIPTION: usize = 4096;
const MAX_RRULE: usize = 512;

/// A room's meeting schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The meeting's title.
    pub title: String,
    /// Start of the (first) occurrence, ms since the epoch.
    pub start_ts: u64,
    /// End of the (first) occurrence, ms since the epoch; after `start_ts`.
    pub end_ts: u64,
    /// RRULE value repeating the meeting, without the `RRULE:` prefix.
    pub rrule: Option<String>,
    /// A description.
    pub description: Option<String>,
}

fn utc(ms: u64) -> Result<DateTime<Utc>> {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .ok_or_else(|| Error::invalid_param("time out of range"))
}

fn text(content: &Value, key: &str, max: usize, required: bool) -> Result<Option<String>> {
    match content.get(key) {
        None | Some(Value::Null) if !required => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= max => Ok(Some(s.clone())),
        _ => Err(Error::invalid_param(format!(
            "`{key}` must be a non-empty string of at most {max} bytes"
        ))),
    }
}

impl Schedule {
    /// Reads a schedule's content: `None` for the empty content (no schedule), 400
    /// `M_INVALID_PARAM` for anything malformed.
    pub fn parse(content: &Value) -> Result<Option<Schedule>> {
        let Some(object) = content.as_object() else {
            return Err(Error::bad_json("the schedule must be a JSON object"));
        };
        if object.is_empty() {
            return Ok(None);
        }
        let title = text(content, "title", MAX_TITLE, true)?.unwrap_or_default();
        let time = |key: &str| {
            content.get(key).and_then(Value::as_u64).ok_or_else(|| {
                Error::invalid_param(format!(
                    "`{key}` must be an integer: milliseconds since the Unix epoch"
                ))
            })
        };
        let (start_ts, end_ts) = (time("start_ts")?, time("end_ts")?);
        if end_ts <= start_ts {
            return Err(Error::invalid_param("`end_ts` must be after `start_ts`"));
        }
        utc(end_ts)?;
        let rrule = text(content, "rrule", MAX_RRULE, false)?
            .map(|r| r.strip_prefix("RRULE:").map(str::to_owned).unwrap_or(r));
        let schedule = Schedule {
            title,
            start_ts,
            end_ts,
            rrule,
            description: text(content, "description", MAX_DESCRIPTION, false)?,
        };
        if let Some(rule) = &schedule.rrule {
            if rule.contains(['\r', '\n']) {
                return Err(Error::invalid_param("`rrule` must be one RRULE value"));
            }
            schedule.rule_set()?;
        }
        Ok(Some(schedule))
    }

    /// The schedule's recurrence set (with its DTSTART), 400 when the RRULE is invalid.
    fn rule_set(&self) -> Result<RRuleSet> {
        let rule = self.rrule.as_deref().unwrap_or_default();
        let start = utc(self.start_ts)?.format("%Y%m%dT%H%M%SZ");
        format!("DTSTART:{start}\nRRULE:{rule}")
            .parse::<RRuleSet>()
            .map_err(|e| Error::invalid_param(format!("invalid `rrule`: {e}")))
    }

    /// The duration of one occurrence, ms.
    pub fn duration_ms(&self) -> u64 {
        self.end_ts - self.start_ts
    }

    /// The next occurrence that has not ended at `now` (ms): `(start, end)`; `None` when
    /// every occurrence is over.
    pub fn next_occurrence(&self, now: u64) -> Option<(u64, u64)> {
        let duration = self.duration_ms();
        if self.rrule.is_none() {
            return (self.end_ts > now).then_some((self.start_ts, self.end_ts));
        }
        // Occurrences starting after `now - duration` have not ended yet.
        let earliest = now
            .saturating_sub(duration)
            .saturating_add(1)
            .max(self.start_ts);
        let after = utc(earliest / 1000 * 1000).ok()?.with_timezone(&Tz::UTC);
        let set = self.rule_set().ok()?.after(after);
        let sub_second = self.start_ts % 1000;
        set.all(16)
            .dates
            .into_iter()
            .filter_map(|dt| u64::try_from(dt.timestamp_millis()).ok())
            .map(|start| start + sub_second)
            .find(|start| start + duration > now)
            .map(|start| (start, start + duration))
    }
}

/// Refuses a malformed `io.myelin.meeting.schedule` (400) or one with a state key.
pub struct SchedulePolicy;

impl RoomPolicy for SchedulePolicy {
    fn name(&self) -> &'static str {
        "meeting_schedule"
    }

    fn check(
        &self,
        _rooms: &RoomsService,
        _guard: &RoomGuard,
        _room: &RoomRecord,
        event: &Pdu,
    ) -> Result<()> {
        if event.kind.to_string() != SCHEDULE_EVENT {
            return Ok(());
        }
        match event.state_key.as_deref() {
            Some("") => {}
            Some(_) => {
                return Err(Error::invalid_param(
                    "A meeting schedule has an empty state key",
                ))
            }
            None => return Ok(()),
        }
        Schedule::parse(&event.content_value()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const HOUR: u64 = 3_600_000;
    // 2030-01-07T09:00:00Z, a Monday.
    const MONDAY_9: u64 = 1_894_006_800_000;

    #[test]
    fn valid_and_invalid_schedules() {
        let ok = json!({"title": "Standup", "start_ts": MONDAY_9, "end_ts": MONDAY_9 + HOUR});
        let s = Schedule::parse(&ok).unwrap().unwrap();
        assert_eq!(
            (s.start_ts, s.end_ts, s.rrule),
            (MONDAY_9, MONDAY_9 + HOUR, None)
        );
        assert_eq!(Schedule::parse(&json!({})).unwrap(), None);
        for bad in [
            json!({"title": "x", "start_ts": MONDAY_9, "end_ts": MONDAY_9}),
            json!({"title": "x", "start_ts": MONDAY_9 + 1, "end_ts": MONDAY_9}),
            json!({"title": "x", "start_ts": 1.5, "end_ts": MONDAY_9}),
            json!({"title": "x", "start_ts": "1", "end_ts": MONDAY_9}),
            json!({"title": "x", "start_ts": -5, "end_ts": MONDAY_9}),
            json!({"title": "x", "start_ts": MONDAY_9}),
            json!({"start_ts": MONDAY_9, "end_ts": MONDAY_9 + HOUR}),
            json!({"title": "", "start_ts": MONDAY_9, "end_ts": MONDAY_9 + HOUR}),
            json!({"title": "x", "start_ts": MONDAY_9, "end_ts": MONDAY_9 + HOUR, "rrule": "FREQ=SOMETIMES"}),
            json!({"title": "x", "start_ts": MONDAY_9, "end_ts": MONDAY_9 + HOUR, "rrule": "FREQ=DAILY\nRDATE:20300101T000000Z"}),
        ] {
            assert_eq!(
                Schedule::parse(&bad).unwrap_err().kind(),
                Some(crate::ErrorKind::Invalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn next_occurrence_expands_the_rrule() {
        let once = Schedule::parse(
            &json!({"title": "x", "start_ts": MONDAY_9, "end_ts": MONDAY_9 + HOUR}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            once.next_occurrence(MONDAY_9 - 1),
            Some((MONDAY_9, MONDAY_9 + HOUR))
        );
        assert_eq!(
            once.next_occurrence(MONDAY_9 + 10),
            Some((MONDAY_9, MONDAY_9 + HOUR))
        );
        assert_eq!(once.next_occurrence(MONDAY_9 + HOUR), None);

        let weekly = Schedule::parse(&json!({"title": "x", "start_ts": MONDAY_9,
            "end_ts": MONDAY_9 + HOUR, "rrule": "RRULE:FREQ=WEEKLY;BYDAY=MO;COUNT=3"}))
        .unwrap()
        .unwrap();
        assert_eq!(
            weekly.rrule.as_deref(),
            Some("FREQ=WEEKLY;BYDAY=MO;COUNT=3")
        );
        let week = 7 * 24 * HOUR;
        assert_eq!(weekly.next_occurrence(0), Some((MONDAY_9, MONDAY_9 + HOUR)));
        assert_eq!(
            weekly.next_occurrence(MONDAY_9 + 2 * HOUR),
            Some((MONDAY_9 + week, MONDAY_9 + week + HOUR))
        );
        assert_eq!(
            weekly.next_occurrence(MONDAY_9 + week + 30 * 60_000),
            Some((MONDAY_9 + week, MONDAY_9 + week + HOUR)),
            "an occurrence under way is the next one until it ends"
        );
        assert_eq!(
            weekly.next_occurrence(MONDAY_9 + 3 * week),
            None,
            "COUNT=3 is over"
        );
    }
}
