//! Meeting recording with the `myelin-recorder` extra package (`rtc.recorder`).
//!
//! A moderator starts a recording: the server runs the recorder with a hidden,
//! subscribe-only LiveKit token for the room's call (in `MYELIN_RECORDER_TOKEN`), keeps
//! the recorder's stdin open while it records and sets the room's `io.myelin.recording`
//! state `{"active": true, "started_by", "started_ts"}`. Stopping sets
//! `{"active": false, …, "stopped_by"}` and closes the recorder's stdin: it finishes its
//! WebM file and prints a one-line JSON summary; the file is uploaded to the media
//! repository as the user who started the recording and posted in the room as an
//! `m.video` event. A recorder that ends on its own without a file (a crash, the SFU
//! gone) leaves `{"active": false, …, "error"}`, as does a file that cannot be saved.
//!
//! A marker file per recording in `<data_dir>/recordings` (next to the recorder's output)
//! lets a restarted server close the state of a recording it lost.
//!
//! Processes sharing a database (and the data dir): the process that runs a room's
//! recorder holds the lease `recording/<room>` while it records and saves, so a start
//! reaching another process finds the recording running there (and answers with its
//! state); a stop reaching another process sends the stopped state, which the recorder's
//! process follows (it reads the room's state every [`FOLLOW`]) by closing the recorder's
//! stdin. The leader closes, every [`RECOVER_EVERY`], the recordings whose marker has no
//! live lease left (their process died).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::{Child, ChildStdin, Command},
};

use super::{token, RtcService, MODERATOR_LEVEL};
use crate::{
    config::Config,
    media::MediaService,
    rooms::{Membership, NewEvent, RoomsService},
    storage::{
        lease::{LeaseGuard, Leases},
        Storage,
    },
    users::now_ms,
    Error, Result,
};

/// The state event type announcing a recording.
pub const RECORDING_EVENT: &str = "io.myelin.recording";

/// The recorder's exit code when no media ever arrived (it leaves no file then).
const NOTHING_RECORDED: i32 = 3;

/// Most bytes of the recorder's stdout kept (its summary is one short line).
const MAX_SUMMARY_BYTES: u64 = 64 * 1024;

/// How long a recording's lease lasts without renewal (shared databases).
const RECORDING_LEASE: Duration = Duration::from_secs(6);

/// How often the recorder's process reads the room's state for a stop sent by another.
const FOLLOW: Duration = Duration::from_millis(500);

/// How often the leader looks for recordings whose process died (shared databases).
const RECOVER_EVERY: Duration = Duration::from_secs(10);

/// A start refused while the room's previous recording is being saved.
fn still_saving() -> Error {
    Error::matrix(
        crate::ErrorKind::Conflict,
        "M_UNKNOWN",
        "The previous recording of this room is still being saved; try again shortly",
    )
}

/// The lease of a room's recording.
fn lease_name(room_id: &RoomId) -> String {
    format!("recording/{room_id}")
}

/// What a moderator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordingAction {
    Start,
    Stop,
}

impl RecordingAction {
    /// `"start"` or `"stop"`.
    pub fn parse(action: &str) -> Option<RecordingAction> {
        match action {
            "start" => Some(RecordingAction::Start),
            "stop" => Some(RecordingAction::Stop),
            _ => None,
        }
    }
}

/// The recorder's summary line.
#[derive(Debug, Deserialize)]
struct Summary {
    duration_ms: u64,
    size: u64,
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
}

/// A recording whose recorder is running.
struct Active {
    started_by: OwnedUserId,
    started_ts: u64,
    /// The recorder's stdin; dropping it tells the recorder to finish.
    stdin: Option<ChildStdin>,
    /// The moderator who stopped it, once one did.
    stopped_by: Option<OwnedUserId>,
    /// With a shared database: the recording's lease, held until its files are gone.
    _lease: Option<LeaseGuard>,
}

impl Active {
    fn state(&self) -> Value {
        json!({
            "active": self.stopped_by.is_none(),
            "started_by": self.started_by,
            "started_ts": self.started_ts,
        })
    }
}

/// The marker file of a running recording.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    room_id: OwnedRoomId,
    started_by: OwnedUserId,
    started_ts: u64,
}

/// The recording service.
pub struct RecordingService {
    config: Arc<Config>,
    rooms: Arc<RoomsService>,
    media: Arc<MediaService>,
    rtc: Arc<RtcService>,
    dir: PathBuf,
    active: Mutex<HashMap<OwnedRoomId, Active>>,
    /// One start or stop at a time: each spawns or signals a process and sends an event.
    ops: tokio::sync::Mutex<()>,
    /// With a shared database: the recordings' leases (see the module doc).
    leases: Option<Arc<Leases>>,
}

impl RecordingService {
    pub fn new(
        config: Arc<Config>,
        storage: &Arc<Storage>,
        rooms: Arc<RoomsService>,
        media: Arc<MediaService>,
        rtc: Arc<RtcService>,
    ) -> RecordingService {
        let dir = config.data_dir.join("recordings");
        RecordingService {
            config,
            rooms,
            media,
            rtc,
            dir,
            active: Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
            leases: storage
                .is_shared()
                .then(|| Arc::new(Leases::new(storage.clone(), RECORDING_LEASE, false))),
        }
    }

    /// Whether a recorder is configured.
    pub fn enabled(&self) -> bool {
        !self.config.rtc.recorder.is_empty()
    }

    /// Starts or stops the recording of the room's call for `user`, a joined moderator.
    /// Both are idempotent; the answer is the recording's state.
    #[tracing::instrument(skip(self), fields(room = %room_id, user = %user))]
    pub async fn act(
        self: &Arc<Self>,
        room_id: &RoomId,
        user: &UserId,
        action: RecordingAction,
    ) -> Result<Value> {
        let _op = self.ops.lock().await;
        if !self.enabled() {
            return Err(Error::matrix(
                crate::ErrorKind::NotFound,
                "M_UNRECOGNIZED",
                "Recording is not enabled on this server (rtc.recorder)",
            ));
        }
        if self.rooms.membership(room_id, user)? != Some(Membership::Join) {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        if self.rooms.power_levels(room_id)?.user_level(user) < MODERATOR_LEVEL {
            return Err(Error::forbidden(
                "Only moderators may start or stop a recording",
            ));
        }
        match action {
            RecordingAction::Start => self.start(room_id, user).await,
            RecordingAction::Stop => self.stop(room_id, user).await,
        }
    }

    async fn start(self: &Arc<Self>, room_id: &RoomId, user: &UserId) -> Result<Value> {
        if let Some(active) = self.lock().get(room_id) {
            if active.stopped_by.is_none() {
                return Ok(active.state());
            }
            return Err(still_saving());
        }
        let lease = match &self.leases {
            None => None,
            Some(leases) => {
                let name = lease_name(room_id);
                if !leases.try_acquire(&name)? {
                    // Another process runs this room's recorder.
                    return match self.announced(room_id)? {
                        Some(state) if state["active"] == json!(true) => Ok(json!({
                            "active": true,
                            "started_by": state["started_by"],
                            "started_ts": state["started_ts"],
                        })),
                        _ => Err(still_saving()),
                    };
                }
                Some(leases.hold(&name).await?)
            }
        };
        let started_ts = now_ms();
        let room_hash = hex::encode(Sha256::digest(room_id.as_str().as_bytes()));
        let base = self.dir.join(format!("{}-{started_ts}", &room_hash[..24]));
        let out = base.with_extension("webm");
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::internal(format!("creating {}: {e}", self.dir.display())))?;
        let claims = token::recorder_claims(
            self.rtc.livekit_keys(),
            token::livekit_room_name(room_id.as_str(), token::ROOM_CALL_SLOT),
            started_ts / 1000,
            self.config.rtc.token_ttl_secs,
        );
        let jwt = token::encode(&claims, self.rtc.livekit_keys())?;
        let mut child = Command::new(&self.config.rtc.recorder)
            .arg("--url")
            .arg(self.rtc.sfu_internal_url(room_id, token::ROOM_CALL_SLOT))
            .arg("--out")
            .arg(&out)
            .env("MYELIN_RECORDER_TOKEN", jwt)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::internal(format!(
                    "starting the recorder {}: {e}",
                    self.config.rtc.recorder
                ))
            })?;
        let marker = Marker {
            room_id: room_id.to_owned(),
            started_by: user.to_owned(),
            started_ts,
        };
        let written = serde_json::to_vec(&marker)
            .map_err(Error::from)
            .and_then(|bytes| {
                std::fs::write(base.with_extension("json"), bytes)
                    .map_err(|e| Error::internal(format!("writing the recording marker: {e}")))
            });
        let content = json!({ "active": true, "started_by": user, "started_ts": started_ts });
        let sent = match written {
            Ok(()) => self
                .rooms
                .send_to(room_id, user, NewEvent::state(RECORDING_EVENT, "", content))
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            if let Err(kill) = child.start_kill() {
                tracing::warn!(error = %kill, "could not stop the recorder");
            }
            remove_files(&base);
            return Err(e);
        }
        let active = Active {
            started_by: user.to_owned(),
            started_ts,
            stdin: child.stdin.take(),
            stopped_by: None,
            _lease: lease,
        };
        let state = active.state();
        self.lock().insert(room_id.to_owned(), active);
        tokio::spawn(self.clone().watch(room_id.to_owned(), child, base));
        tracing::info!("recording started");
        Ok(state)
    }

    async fn stop(&self, room_id: &RoomId, user: &UserId) -> Result<Value> {
        let local = self.lock().get(room_id).map(|active| {
            let running = active.stopped_by.is_none();
            (running, active.started_by.clone(), active.started_ts)
        });
        let (started_by, started_ts) = match local {
            Some((true, started_by, started_ts)) => (started_by, started_ts),
            Some((false, ..)) => return Ok(json!({ "active": false })),
            // With a shared database the recorder may run on another process: the
            // stopped state is what it follows.
            None => match self.announced(room_id)? {
                Some(state) if self.leases.is_some() && state["active"] == json!(true) => {
                    let started_by = serde_json::from_value(state["started_by"].clone())
                        .map_err(|_| Error::internal("unreadable recording state"))?;
                    let started_ts = state["started_ts"].as_u64().unwrap_or_default();
                    (started_by, started_ts)
                }
                _ => return Ok(json!({ "active": false })),
            },
        };
        let content = json!({
            "active": false,
            "started_by": started_by,
            "started_ts": started_ts,
            "stopped_by": user,
        });
        self.rooms
            .send_to(room_id, user, NewEvent::state(RECORDING_EVENT, "", content))
            .await?;
        if let Some(active) = self.lock().get_mut(room_id) {
            active.stopped_by = Some(user.to_owned());
            // EOF on its stdin: the recorder finishes its file and exits.
            active.stdin = None;
        }
        tracing::info!("recording stopped");
        Ok(json!({ "active": false, "started_by": started_by, "started_ts": started_ts }))
    }

    /// Waits for the recorder to exit, then posts its file or records why there is none.
    async fn watch(self: Arc<Self>, room_id: OwnedRoomId, mut child: Child, base: PathBuf) {
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let read_stdout = async move {
            let mut text = String::new();
            if let Some(stdout) = stdout {
                if let Err(e) = stdout
                    .take(MAX_SUMMARY_BYTES)
                    .read_to_string(&mut text)
                    .await
                {
                    tracing::warn!(error = %e, "reading the recorder's summary");
                }
            }
            text
        };
        let room_for_log = room_id.clone();
        let read_stderr = async move {
            let mut last = String::new();
            if let Some(stderr) = stderr {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(room = %room_for_log, "recorder: {line}");
                    if !line.trim().is_empty() {
                        last = line;
                    }
                }
            }
            last
        };
        let ended = async { tokio::join!(child.wait(), read_stdout, read_stderr) };
        tokio::pin!(ended);
        let (status, summary, last_error) = if self.leases.is_some() {
            tokio::select! {
                ended = &mut ended => ended,
                () = self.follow_stop(&room_id) => ended.await,
            }
        } else {
            ended.await
        };
        // Removed here, dropped (with its lease) once its files are gone.
        let active = self.lock().remove(&room_id);
        let Some(active) = active else {
            tracing::error!(room = %room_id, "a recorder ended that was not recorded as running");
            remove_files(&base);
            return;
        };
        let outcome = match status {
            Ok(status) => {
                self.save(&room_id, &active, status, &summary, &last_error, &base)
                    .await
            }
            Err(e) => Err(format!("the recorder could not be waited for: {e}")),
        };
        if let Err(reason) = outcome {
            tracing::warn!(room = %room_id, %reason, "recording ended without a video");
            let content = json!({
                "active": false,
                "started_by": active.started_by,
                "started_ts": active.started_ts,
                "stopped_by": active.stopped_by,
                "error": reason,
            });
            if let Err(e) = self
                .rooms
                .send_to(
                    &room_id,
                    &active.started_by,
                    NewEvent::state(RECORDING_EVENT, "", content),
                )
                .await
            {
                tracing::error!(room = %room_id, error = %e, "could not record the recording's end");
            }
        }
        remove_files(&base);
    }

    /// Uploads a finished recording and posts it; the error is the reason shown in the
    /// room's state when there is no video to post.
    async fn save(
        &self,
        room_id: &RoomId,
        active: &Active,
        status: ExitStatus,
        stdout: &str,
        last_error: &str,
        base: &Path,
    ) -> std::result::Result<(), String> {
        let why = || {
            if last_error.is_empty() {
                String::new()
            } else {
                format!(": {last_error}")
            }
        };
        if status.code() == Some(NOTHING_RECORDED) {
            return Err("Nothing was recorded: nobody in the call sent audio or video".into());
        }
        if !status.success() {
            return Err(if active.stopped_by.is_some() {
                format!("The recorder failed while saving ({status}){}", why())
            } else {
                format!("The recorder stopped unexpectedly ({status}){}", why())
            });
        }
        let summary: Summary = stdout
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .and_then(|line| serde_json::from_str(line).ok())
            .ok_or_else(|| "The recorder finished without a summary".to_owned())?;
        let path = base.with_extension("webm");
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| format!("The recorder left no file: {e}"))?;
        let filename = recording_filename(active.started_ts);
        let mxc = self
            .media
            .upload(
                &active.started_by,
                Some("video/webm"),
                Some(filename.clone()),
                tokio_util::io::ReaderStream::new(file),
            )
            .await
            .map_err(|e| format!("The recording could not be saved: {e}"))?;
        let mut info = json!({
            "mimetype": "video/webm",
            "size": summary.size,
            "duration": summary.duration_ms,
        });
        if summary.width > 0 && summary.height > 0 {
            info["w"] = json!(summary.width);
            info["h"] = json!(summary.height);
        }
        let content = json!({
            "msgtype": "m.video",
            "body": filename,
            "filename": filename,
            "url": mxc,
            "info": info,
        });
        self.rooms
            .send_to(
                room_id,
                &active.started_by,
                NewEvent::message("m.room.message", content),
            )
            .await
            .map_err(|e| format!("The recording could not be posted: {e}"))?;
        tracing::info!(room = %room_id, %mxc, size = summary.size, "recording posted");
        Ok(())
    }

    /// The room's `io.myelin.recording` state content, if any.
    fn announced(&self, room_id: &RoomId) -> Result<Option<Value>> {
        self.rooms.state_content(room_id, RECORDING_EVENT, "")
    }

    /// Returns once a stop of this process's recording of the room has been sent by
    /// another process (its state says stopped, by whom, for this recording's start),
    /// after closing the recorder's stdin; never if the recording is stopped here.
    async fn follow_stop(&self, room_id: &RoomId) {
        loop {
            tokio::time::sleep(FOLLOW).await;
            let Some(started_ts) = self
                .lock()
                .get(room_id)
                .filter(|active| active.stopped_by.is_none())
                .map(|active| active.started_ts)
            else {
                return std::future::pending().await;
            };
            let state = match self.announced(room_id) {
                Ok(state) => state.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(room = %room_id, error = %e, "reading the recording state");
                    continue;
                }
            };
            let stopped_by = state["stopped_by"]
                .as_str()
                .and_then(|u| UserId::parse(u).ok());
            let Some(stopped_by) = stopped_by else {
                continue;
            };
            if state["active"] != json!(false) || state["started_ts"] != json!(started_ts) {
                continue;
            }
            if let Some(active) = self.lock().get_mut(room_id) {
                active.stopped_by = Some(stopped_by);
                active.stdin = None;
            }
            tracing::info!(room = %room_id, "recording stopped through another process");
            return;
        }
    }

    /// Runs [`Self::recover`] now and, with a shared database, every [`RECOVER_EVERY`]
    /// (a process that dies leaves its recordings to the leader). Call once, on the
    /// leader.
    pub async fn recover_lost(self: Arc<Self>) {
        loop {
            self.recover().await;
            if self.leases.is_none() {
                return;
            }
            tokio::time::sleep(RECOVER_EVERY).await;
        }
    }

    /// Closes the state of recordings whose server stopped while they ran (their marker
    /// files are left, and with a shared database no process holds their lease) and
    /// removes what they left behind.
    async fn recover(&self) {
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let marker = match tokio::fs::read(&path)
                .await
                .map(|b| serde_json::from_slice::<Marker>(&b))
            {
                Ok(Ok(marker)) => marker,
                _ => {
                    tracing::warn!(path = %path.display(), "unreadable recording marker removed");
                    remove_files(&path.with_extension(""));
                    continue;
                }
            };
            let lease = lease_name(&marker.room_id);
            if let Some(leases) = &self.leases {
                // A live lease (this process's included): the recording runs or saves.
                match leases
                    .is_held(&lease)
                    .and_then(|held| Ok(!held && leases.try_acquire(&lease)?))
                {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(room = %marker.room_id, error = %e, "reading a recording's lease");
                        continue;
                    }
                }
            }
            if let Err(e) = self.close_lost(&marker).await {
                tracing::error!(room = %marker.room_id, error = %e, "could not close a lost recording");
            }
            remove_files(&path.with_extension(""));
            if let Some(leases) = &self.leases {
                if let Err(e) = leases.release(&lease) {
                    tracing::warn!(room = %marker.room_id, error = %e, "releasing a recording's lease");
                }
            }
        }
    }

    async fn close_lost(&self, marker: &Marker) -> Result<()> {
        let current = self.announced(&marker.room_id)?;
        let still_announced = current.is_some_and(|c| {
            c["active"] == json!(true) && c["started_ts"] == json!(marker.started_ts)
        });
        if !still_announced {
            return Ok(());
        }
        let content = json!({
            "active": false,
            "started_by": marker.started_by,
            "started_ts": marker.started_ts,
            "error": "The server stopped during the recording",
        });
        self.rooms
            .send_to(
                &marker.room_id,
                &marker.started_by,
                NewEvent::state(RECORDING_EVENT, "", content),
            )
            .await?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedRoomId, Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The posted file's name: `Recording 2026-12-04 09:30 UTC.webm`.
fn recording_filename(started_ts: u64) -> String {
    let when = chrono::DateTime::from_timestamp_millis(started_ts as i64)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| started_ts.to_string());
    format!("Recording {when}.webm")
}

/// Removes a recording's marker and output (`base` without extension).
fn remove_files(base: &Path) {
    for ext in ["json", "webm"] {
        let path = base.with_extension(ext);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a recording file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse() {
        assert_eq!(
            RecordingAction::parse("start"),
            Some(RecordingAction::Start)
        );
        assert_eq!(RecordingAction::parse("stop"), Some(RecordingAction::Stop));
        assert_eq!(RecordingAction::parse("pause"), None);
        assert_eq!(RecordingAction::parse(""), None);
    }

    #[test]
    fn filename_carries_the_start_time() {
        assert_eq!(
            recording_filename(1_796_376_600_000),
            "Recording 2026-12-04 09:30 UTC.webm"
        );
    }

    #[test]
    fn files_are_removed_by_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("abc-1");
        std::fs::write(base.with_extension("json"), b"{}").unwrap();
        std::fs::write(base.with_extension("webm"), b"x").unwrap();
        remove_files(&base);
        assert!(!base.with_extension("json").exists());
        assert!(!base.with_extension("webm").exists());
        remove_files(&base);
    }
}
