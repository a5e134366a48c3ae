// Myelin Meet: the lobby (room, devices, who you are) and the meeting (video grid, chat,
// controls), wired to the Matrix client (matrix.js) and the SFU session (sfu.js).

import * as matrix from './matrix.js?v={{version}}';
import { SfuSession } from './sfu.js?v={{version}}';
import { explain, levelMeter, listDevices, openMedia, testTone } from './devices.js?v={{version}}';
import { Grid } from './grid.js?v={{version}}';
import { Panel } from './panel.js?v={{version}}';

const $ = (id) => document.getElementById(id);
const linkToken = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');
/** The membership's withdrawal is scheduled this far ahead and pushed back while the page lives. */
const LEAVE_DELAY_MS = 20_000;
const LEAVE_RESTART_MS = 7_000;
// The SFU may ask us to join again (it lost media we still send); more than this many
// requests within the window end the call instead.
const RECONNECTS_MAX = 3;
const RECONNECTS_WINDOW_MS = 60_000;

const lobby = { info: null, client: null, stream: null, stopMeter: null };
let meeting = null;

// ---------------------------------------------------------------------------------------
// Lobby

function show(section) {
  for (const id of ['lobby', 'meeting', 'ended']) {
    $(id).hidden = id !== section;
  }
}

function say(id, text) {
  $(id).textContent = text || '';
}

function countText(n) {
  if (!n) {
    return 'No one is in the call yet.';
  }
  return n === 1 ? '1 person is in the call.' : `${n} people are in the call.`;
}

async function loadRoom() {
  try {
    lobby.info = await matrix.lobby(linkToken);
  } catch (e) {
    say('room-name', e.status === 404 ? 'This meeting link is not valid' : 'The meeting cannot be loaded');
    say('lobby-message', e.status === 404 ? 'Ask the organiser for a new link.' : e.message);
    return false;
  }
  const name = lobby.info.name || 'Meeting';
  say('room-name', name);
  document.title = `${name} · Myelin Meet`;
  say('room-topic', lobby.info.topic || '');
  say('call-count', countText(lobby.info.call?.participants || 0));
  return true;
}

function fill(select, devices, chosen) {
  select.replaceChildren();
  for (const d of devices) {
    const option = document.createElement('option');
    option.value = d.id;
    option.textContent = d.label;
    option.selected = d.id === chosen;
    select.append(option);
  }
  if (devices.length === 0) {
    const option = document.createElement('option');
    option.value = '';
    option.textContent = 'None found';
    select.append(option);
  }
  select.disabled = devices.length === 0;
}

/** (Re)opens the chosen camera and microphone for the preview and the meter. */
async function preview() {
  lobby.stopMeter?.();
  lobby.stream?.getTracks().forEach((t) => t.stop());
  const cameraOff = $('start-camera-off').checked;
  const { stream, problems } = await openMedia({
    micId: $('mic-select').value,
    cameraId: $('camera-select').value,
    video: !cameraOff,
  });
  lobby.stream = stream;
  $('preview').srcObject = stream;
  $('preview-off').hidden = stream.getVideoTracks().length > 0;
  lobby.stopMeter = levelMeter(stream, (level) => {
    $('mic-level').value = $('start-mic-off').checked ? 0 : level;
  });
  const devices = await listDevices();
  const current = (kind) => stream.getTracks().find((t) => t.kind === kind)?.getSettings().deviceId;
  fill($('camera-select'), devices.cameras, current('video') || $('camera-select').value);
  fill($('mic-select'), devices.mics, current('audio') || $('mic-select').value);
  fill($('speaker-select'), devices.speakers, $('speaker-select').value);
  if (devices.speakers.length === 0) {
    // Browsers that cannot choose (or list) outputs play on the default one.
    $('speaker-select').replaceChildren(new Option('Default speaker', ''));
  }
  const notes = [...problems];
  if (!problems.length && devices.cameras.length === 0 && !cameraOff) {
    notes.push('No camera was found: others will see your initials.');
  }
  say('device-message', notes.join(' '));
}

function showIdentity() {
  const client = lobby.client;
  const user = client && !client.guest;
  $('as-user').hidden = !user;
  $('as-guest').hidden = Boolean(user);
  $('sign-in-form').hidden = Boolean(user);
  if (user) {
    client.displayName().then((name) => say('signed-in-as', `${name} (${client.userId})`));
  }
}

async function signIn() {
  const user = $('sign-in-user').value.trim();
  const password = $('sign-in-password').value;
  if (!user || !password) {
    say('lobby-message', 'Enter your username and password to sign in.');
    return;
  }
  $('sign-in').disabled = true;
  try {
    lobby.client = new matrix.Client(await matrix.login(user, password));
    $('sign-in-password').value = '';
    say('lobby-message', '');
    showIdentity();
  } catch (e) {
    say('lobby-message', `Sign-in failed: ${e.message}`);
  } finally {
    $('sign-in').disabled = false;
  }
}

async function signOut() {
  await lobby.client?.logout();
  lobby.client = null;
  showIdentity();
}

async function join() {
  $('join').disabled = true;
  say('lobby-message', 'Joining…');
  try {
    let client = lobby.client;
    const name = $('display-name').value.trim();
    if (!client || client.guest) {
      if (!name) {
        throw new Error('Enter your name, or sign in.');
      }
      if (!client || !(await client.valid())) {
        client = new matrix.Client(await matrix.registerGuest());
      }
    }
    lobby.client = client;
    const joined = await client.joinByLink(linkToken, client.guest ? name : undefined);
    lobby.stopMeter?.();
    const stream = lobby.stream;
    lobby.stream = null;
    $('preview').srcObject = null;
    await startMeeting(client, joined.room_id, stream, {
      micOff: $('start-mic-off').checked,
      speakerId: $('speaker-select').value,
    });
    say('lobby-message', '');
  } catch (e) {
    say('lobby-message', e.message);
    $('join').disabled = false;
  }
}

async function initLobby() {
  $('sign-in').addEventListener('click', signIn);
  $('sign-in-password').addEventListener('keydown', (e) => e.key === 'Enter' && signIn());
  $('sign-out').addEventListener('click', signOut);
  $('join').addEventListener('click', join);
  $('display-name').addEventListener('keydown', (e) => e.key === 'Enter' && join());
  for (const id of ['camera-select', 'mic-select', 'start-camera-off']) {
    $(id).addEventListener('change', () => preview());
  }
  $('test-speaker').addEventListener('click', () => testTone($('speaker-select').value));
  $('rejoin').addEventListener('click', () => location.reload());
  if (!(await loadRoom())) {
    return;
  }
  const saved = matrix.savedSession();
  if (saved) {
    const client = new matrix.Client(saved);
    if (await client.valid().catch(() => false)) {
      lobby.client = client;
    }
  }
  showIdentity();
  await preview().catch((e) => say('device-message', explain(e)));
  $('join').disabled = false;
}

// ---------------------------------------------------------------------------------------
// Meeting

/** `@user:server:DEVICE` (the SFU identity) → `@user:server`. */
function userOf(identity) {
  const cut = identity.lastIndexOf(':');
  return cut > 0 && identity.indexOf(':') < cut ? identity.slice(0, cut) : identity;
}

class Meeting {
  constructor(client, roomId, stream, options) {
    this.client = client;
    this.roomId = roomId;
    this.stream = stream;
    this.audioMuted = options.micOff;
    this.remoteVideo = new Map();
    this.speaking = new Set();
    this.abort = new AbortController();
    this.openedAt = Date.now();
    this.reconnects = [];
    this.connections = 0;
    this.grid = new Grid($('grid'), $('audio'));
    this.grid.speakerId = options.speakerId;
    this.panel = new Panel(
      { messages: $('messages'), input: $('chat-input'), send: $('chat-send'), mutedNote: $('chat-note'), participants: $('participants') },
      { send: (body) => client.sendMessage(roomId, body), kick: (userId) => this.kick(userId) },
      client.userId,
    );
    this.panel.onChange = (event) => this.roomChanged(event);
  }

  async start() {
    const client = this.client;
    $('meeting-name').textContent = lobby.info?.name || 'Meeting';
    show('meeting');
    this.render();
    this.client
      .follow(this.roomId, (event) => this.panel.onEvent(event), this.abort.signal, () => this.checkMembership())
      .then(() => {
        // The sync stops by itself only when our token is gone (a meeting guest's account
        // ends with its last meeting): we are out.
        if (!this.ending && !this.abort.signal.aborted) {
          this.end('You were removed from the meeting');
        }
      });
    this.serviceUrl = await client.serviceUrl();
    await client.joinCall(this.roomId, this.serviceUrl);
    this.delayId = await client.scheduleLeave(this.roomId, LEAVE_DELAY_MS).catch(() => null);
    if (this.delayId) {
      this.restarter = setInterval(() => client.restartDelayed(this.delayId).catch(() => {}), LEAVE_RESTART_MS);
    }
    await this.connectSfu();
    this.wireControls();
    this.render();
  }

  /**
   * Joins the SFU with a new session and token, and publishes what we send: the
   * microphone, the camera, a screen share. True once done; false for a session the SFU
   * closed for a reconnect meanwhile, given up quietly (`sfuClosed` started the next one).
   */
  async connectSfu() {
    const { url, jwt } = await this.client.sfuToken(this.serviceUrl, this.roomId);
    const sfu = new SfuSession();
    this.sfu = sfu;
    sfu.addEventListener('participants', () => this.render());
    sfu.addEventListener('track', (e) => this.remoteTrack(e.detail));
    sfu.addEventListener('speakers', (e) => this.speakers(e.detail));
    sfu.addEventListener('muted', (e) => this.mutedByServer(e.detail));
    sfu.addEventListener('room', (e) => {
      this.sfuRecording = Boolean(e.detail.activeRecording);
      this.render();
    });
    sfu.addEventListener('closed', (e) => this.sfuClosed(sfu, e.detail.reason));
    try {
      await sfu.connect(url, jwt);
      this.connections += 1;
      $('call-status').dataset.connections = String(this.connections);
      const audio = this.stream.getAudioTracks()[0];
      if (audio) {
        audio.enabled = !this.audioMuted;
        this.audioSid = await sfu.publish(audio, this.stream, 'MICROPHONE', this.audioMuted);
      }
      const video = this.stream.getVideoTracks()[0];
      if (video) {
        this.videoSid = await sfu.publish(video, this.stream, 'CAMERA', !video.enabled);
      }
      const screen = this.screenStream?.getVideoTracks()[0];
      if (this.screenSid && screen?.readyState === 'live') {
        this.screenSid = await sfu.publish(screen, this.screenStream, 'SCREEN_SHARE', false);
      }
    } catch (e) {
      if (sfu.closedFor !== 'reconnect') {
        throw e;
      }
    }
    return !sfu.closed;
  }

  /** The SFU session `sfu` ended: join again if the SFU asks for it, else the meeting ends. */
  sfuClosed(sfu, reason) {
    if (meeting !== this || this.ending || sfu !== this.sfu) {
      return;
    }
    if (reason === 'removed') {
      this.end('You were removed from the meeting');
    } else if (reason === 'reconnect') {
      this.reconnect();
    } else {
      this.end('The call ended', reason);
    }
  }

  /**
   * The SFU asked us to join again (it lost media we still send): the others' media of
   * the old session goes, a new session starts and publishes our tracks again. Too many
   * requests in a row end the call.
   */
  async reconnect() {
    const now = Date.now();
    this.reconnects = this.reconnects.filter((at) => now - at < RECONNECTS_WINDOW_MS);
    if (this.reconnects.length >= RECONNECTS_MAX) {
      this.end('The call ended', 'the call server keeps asking to reconnect');
      return;
    }
    this.reconnects.push(now);
    say('call-status', 'Reconnecting…');
    this.remoteVideo.clear();
    this.grid.clearAudio();
    this.speaking.clear();
    this.render();
    try {
      if (await this.connectSfu()) {
        say('call-status', '');
      }
    } catch (e) {
      if (meeting === this && !this.ending) {
        this.end('The call ended', e.message);
      }
      return;
    }
    this.render();
  }

  wireControls() {
    $('mute').onclick = () => this.setAudioMuted(!this.audioMuted);
    $('camera').onclick = () => this.toggleCamera();
    $('screen-share').onclick = () => this.toggleScreen();
    $('leave').onclick = () => this.end('You left the meeting');
    $('mute-all').onclick = () =>
      this.client.muteAll(this.roomId).catch((e) => say('meeting-message', `Mute everyone failed: ${e.message}`));
    $('record').onclick = () => {
      const action = this.panel.recordingActive() ? 'stop' : 'start';
      this.client
        .recording(this.roomId, action)
        .catch((e) => say('meeting-message', `${action === 'start' ? 'Starting' : 'Stopping'} the recording failed: ${e.message}`));
    };
    $('text-mute').onclick = () =>
      this.client
        .textMute(this.roomId, !this.panel.textMuted())
        .catch((e) => say('meeting-message', `Muting the chat failed: ${e.message}`));
    $('copy-link').onclick = () => this.copyLink();
  }

  setAudioMuted(muted) {
    const track = this.stream.getAudioTracks()[0];
    if (!track) {
      say('meeting-message', 'No microphone is in use.');
      return;
    }
    this.audioMuted = muted;
    track.enabled = !muted;
    this.sfu.setMuted(this.audioSid, muted);
    this.render();
  }

  mutedByServer({ trackSid, muted }) {
    if (trackSid === this.audioSid) {
      this.audioMuted = muted;
      const track = this.stream.getAudioTracks()[0];
      if (track) {
        track.enabled = !muted;
      }
      say('meeting-message', muted ? 'A moderator muted your microphone.' : '');
      this.render();
    }
  }

  async toggleCamera() {
    const track = this.stream.getVideoTracks()[0];
    if (!track) {
      const { stream, problems } = await openMedia({ audio: false, cameraId: $('camera-select').value });
      const video = stream.getVideoTracks()[0];
      if (!video) {
        say('meeting-message', problems.join(' '));
        return;
      }
      this.stream.addTrack(video);
      this.videoSid = await this.sfu.publish(video, this.stream, 'CAMERA', false);
    } else {
      track.enabled = !track.enabled;
      this.sfu.setMuted(this.videoSid, !track.enabled);
    }
    this.render();
  }

  async toggleScreen() {
    if (this.screenSid) {
      const sid = this.screenSid;
      this.screenSid = null;
      await this.sfu.unpublish(sid);
      this.render();
      return;
    }
    try {
      const screen = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
      const track = screen.getVideoTracks()[0];
      track.addEventListener('ended', () => {
        if (this.screenSid) {
          this.toggleScreen();
        }
      });
      this.screenStream = screen;
      this.screenSid = await this.sfu.publish(track, screen, 'SCREEN_SHARE', false);
    } catch (e) {
      say('meeting-message', e.name === 'NotAllowedError' ? 'Screen sharing was cancelled.' : `Screen sharing failed: ${e.message}`);
    }
    this.render();
  }

  async copyLink() {
    const url = location.href;
    try {
      await navigator.clipboard.writeText(url);
      say('copied', 'Link copied');
    } catch {
      say('copied', url);
    }
    setTimeout(() => say('copied', ''), 4000);
  }

  async kick(userId) {
    try {
      await this.client.kick(this.roomId, userId);
    } catch (e) {
      say('meeting-message', `Removing ${this.panel.name(userId)} failed: ${e.message}`);
    }
  }

  remoteTrack({ participantSid, trackSid, track }) {
    if (track.kind === 'audio') {
      this.grid.addAudio(trackSid, track);
    } else {
      this.remoteVideo.set(trackSid, new MediaStream([track]));
      track.addEventListener('ended', () => {
        this.remoteVideo.delete(trackSid);
        this.render();
      });
    }
    if (participantSid) {
      this.render();
    }
  }

  speakers(changes) {
    for (const s of changes) {
      const key = s.sid === this.sfu.local?.sid ? 'local' : s.sid;
      if (s.active) {
        this.speaking.add(key);
      } else {
        this.speaking.delete(key);
      }
    }
    this.grid.setSpeaking(this.speaking);
  }

  /** A member or power-level change: names, moderator controls. */
  roomChanged(event) {
    if (event.type === 'm.room.member' && event.state_key === this.client.userId) {
      this.lastOwnMember = event;
    }
    // A recording that ended badly while we are here (not one from before we came).
    const recent = (event.origin_server_ts || 0) > this.openedAt - 60_000;
    if (event.type === 'io.myelin.recording' && recent && this.panel.recordingError()) {
      say('meeting-message', `The recording ended without a video: ${this.panel.recordingError()}`);
    }
    this.render();
  }

  /** After each sync answer: were we removed from the room (kicked, banned)? */
  checkMembership() {
    const event = this.lastOwnMember;
    const membership = event?.content?.membership;
    if (!this.ending && (membership === 'leave' || membership === 'ban')) {
      const reason = event.sender === this.client.userId ? '' : event.content?.reason || '';
      this.end('You were removed from the meeting', reason);
    }
  }

  /** Redraws tiles, the participant list and the controls from the current state. */
  render() {
    const me = this.client.userId;
    const moderator = this.panel.isModerator();
    $('mute-all').hidden = !moderator;
    // The red dot: the room's recording state, or the SFU saying its recorder is in.
    const recording = this.panel.recordingActive() || Boolean(this.sfuRecording);
    $('recording').hidden = !recording;
    $('record').hidden = !moderator;
    $('record').textContent = this.panel.recordingActive() ? 'Stop recording' : 'Record';
    $('record').setAttribute('aria-pressed', String(this.panel.recordingActive()));
    $('text-mute').hidden = !moderator;
    $('copy-link').hidden = !moderator;
    $('text-mute').textContent = this.panel.textMuted() ? 'Unmute chat' : 'Mute chat';
    $('text-mute').setAttribute('aria-pressed', String(this.panel.textMuted()));
    $('mute').textContent = this.audioMuted ? 'Unmute' : 'Mute';
    $('mute').setAttribute('aria-pressed', String(this.audioMuted));
    const camera = this.stream.getVideoTracks()[0];
    const cameraOn = Boolean(camera && camera.enabled);
    $('camera').textContent = cameraOn ? 'Stop camera' : 'Start camera';
    $('camera').setAttribute('aria-pressed', String(!cameraOn));
    $('screen-share').textContent = this.screenSid ? 'Stop sharing' : 'Share screen';
    $('screen-share').setAttribute('aria-pressed', String(Boolean(this.screenSid)));

    const inCall = new Map([[me, 1]]);
    const localVideo = this.screenSid ? this.screenStream : this.stream;
    this.grid.upsert('local', {
      userId: me,
      name: this.panel.name(me),
      audioMuted: this.audioMuted || this.stream.getAudioTracks().length === 0,
      videoStream: localVideo,
      local: true,
    });
    this.grid.setVideoOff('local', !this.screenSid && !cameraOn);
    const present = new Set(['local']);
    for (const [sid, p] of this.sfu?.others || []) {
      const userId = userOf(p.identity || '');
      inCall.set(userId, (inCall.get(userId) || 0) + 1);
      const tracks = p.tracks || [];
      const audio = tracks.find((t) => (t.type || 'AUDIO') === 'AUDIO');
      const videos = tracks.filter((t) => t.type === 'VIDEO' && !t.muted);
      const video = videos.find((t) => t.source === 'SCREEN_SHARE') || videos[0];
      const stream = video ? this.remoteVideo.get(video.sid) : undefined;
      this.grid.upsert(sid, {
        userId,
        name: this.panel.members.has(userId) ? this.panel.name(userId) : p.name || userId,
        audioMuted: !audio || Boolean(audio.muted),
        videoStream: stream || null,
      });
      this.grid.setVideoOff(sid, !stream);
      present.add(sid);
    }
    for (const key of this.grid.keys()) {
      if (!present.has(key)) {
        this.grid.remove(key);
      }
    }
    this.panel.setInCall(inCall);
  }

  /** Leaves: the SFU, the call membership (so the server lets a temporary participant go), the sync. */
  async end(title, reason = '') {
    if (this.ending) {
      return;
    }
    this.ending = true;
    clearInterval(this.restarter);
    this.sfu?.leave();
    this.stream.getTracks().forEach((t) => t.stop());
    this.screenStream?.getTracks().forEach((t) => t.stop());
    this.grid.clear();
    await this.client.leaveCall(this.roomId).catch(() => {});
    if (this.delayId) {
      await this.client
        .request('POST', `/_matrix/client/unstable/org.matrix.msc4140/delayed_events/${encodeURIComponent(this.delayId)}`, { action: 'cancel' })
        .catch(() => {});
    }
    this.abort.abort();
    meeting = null;
    say('ended-title', title);
    say('ended-reason', reason);
    show('ended');
  }

  /** The tab is closing: leave the SFU and send the scheduled withdrawal now. */
  unload() {
    this.sfu?.leave();
    if (this.delayId) {
      matrix.Client.sendDelayedNow(this.delayId).catch(() => {});
    }
  }
}

async function startMeeting(client, roomId, stream, options) {
  meeting = new Meeting(client, roomId, stream, options);
  try {
    await meeting.start();
  } catch (e) {
    const failed = meeting;
    await failed?.end('Joining the call failed', e.message);
  }
}

window.addEventListener('pagehide', () => meeting?.unload());

initLobby().catch((e) => say('lobby-message', e.message));
