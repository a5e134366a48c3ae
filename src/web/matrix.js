// The page's Matrix client: the few client-server API calls a meeting needs, on the
// page's own session (kept in localStorage), against the server that served the page.

const SESSION_KEY = 'myelin.meet.session';
const MEMBER_TYPE = 'org.matrix.msc3401.call.member';
const myelin = '/_matrix/client/unstable/io.myelin';
const v3 = '/_matrix/client/v3';
const delayed = '/_matrix/client/unstable/org.matrix.msc4140/delayed_events';

const enc = encodeURIComponent;

/** A Matrix error answer: `errcode`, `message` and the HTTP status. */
export class MatrixError extends Error {
  constructor(status, body) {
    super(body?.error || `request failed (HTTP ${status})`);
    this.status = status;
    this.errcode = body?.errcode || 'M_UNKNOWN';
  }
}

async function call(method, path, { token, body, keepalive, signal } = {}) {
  const headers = {};
  if (token) {
    headers.Authorization = `Bearer ${token}`;
  }
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
  }
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    keepalive,
    signal,
  });
  const text = await response.text();
  let json = {};
  try {
    json = text ? JSON.parse(text) : {};
  } catch {
    json = {};
  }
  if (!response.ok) {
    throw new MatrixError(response.status, json);
  }
  return json;
}

/** What a join link's lobby shows: `{room_id, name, topic, call: {participants}}`. */
export function lobby(token) {
  return call('GET', `${myelin}/join/${enc(token)}`);
}

/** The saved session, if any. */
export function savedSession() {
  try {
    const session = JSON.parse(localStorage.getItem(SESSION_KEY) || 'null');
    return session?.accessToken && session?.userId ? session : null;
  } catch {
    return null;
  }
}

function save(session) {
  localStorage.setItem(SESSION_KEY, JSON.stringify(session));
  return session;
}

export function forgetSession() {
  localStorage.removeItem(SESSION_KEY);
}

/** Password login of a local user. */
export async function login(user, password) {
  const answer = await call('POST', `${v3}/login`, {
    body: {
      type: 'm.login.password',
      identifier: { type: 'm.id.user', user },
      password,
      initial_device_display_name: 'Myelin Meet',
    },
  });
  return save({ userId: answer.user_id, accessToken: answer.access_token, deviceId: answer.device_id, guest: false });
}

/** A new guest account (a meeting guest: it may take part in the meetings it joins by link). */
export async function registerGuest() {
  const answer = await call('POST', `${v3}/register?kind=guest`, { body: {} });
  return save({ userId: answer.user_id, accessToken: answer.access_token, deviceId: answer.device_id, guest: true });
}

/** One signed-in session and the calls made with it. */
export class Client {
  constructor(session) {
    this.session = session;
    this.userId = session.userId;
    this.deviceId = session.deviceId;
    this.guest = session.guest;
  }

  request(method, path, body, options = {}) {
    return call(method, path, { token: this.session.accessToken, body, ...options });
  }

  /** Checks the token still works (a meeting guest's ends when its meeting does). */
  async valid() {
    try {
      await this.request('GET', `${v3}/account/whoami`);
      return true;
    } catch (e) {
      if (e.status === 401) {
        forgetSession();
        return false;
      }
      throw e;
    }
  }

  async logout() {
    forgetSession();
    await this.request('POST', `${v3}/logout`, {}).catch(() => {});
  }

  joinByLink(token, displayName) {
    const body = displayName ? { display_name: displayName } : {};
    return this.request('POST', `${myelin}/join/${enc(token)}`, body);
  }

  async displayName() {
    const profile = await this.request('GET', `${v3}/profile/${enc(this.userId)}`).catch(() => ({}));
    return profile.displayname || this.userId;
  }

  sendMessage(roomId, body) {
    const txn = `meet${Date.now()}${Math.random().toString(36).slice(2, 8)}`;
    return this.request('PUT', `${v3}/rooms/${enc(roomId)}/send/m.room.message/${txn}`, {
      msgtype: 'm.text',
      body,
    });
  }

  /** The call-membership state key of this device (as Element Call writes it). */
  memberKey() {
    return `_${this.userId}_${this.deviceId}_m.call`;
  }

  /** Announces this device's call membership (MatrixRTC, the LiveKit focus). */
  joinCall(roomId, serviceUrl) {
    return this.request('PUT', `${v3}/rooms/${enc(roomId)}/state/${MEMBER_TYPE}/${enc(this.memberKey())}`, {
      application: 'm.call',
      call_id: '',
      scope: 'm.room',
      device_id: this.deviceId,
      expires: 4 * 3600 * 1000,
      focus_active: { type: 'livekit', focus_selection: 'oldest_membership' },
      foci_preferred: [{ type: 'livekit', livekit_alias: roomId, livekit_service_url: serviceUrl }],
    });
  }

  /** Withdraws the call membership (the server then lets a temporary participant go). */
  leaveCall(roomId, { keepalive = false } = {}) {
    return this.request('PUT', `${v3}/rooms/${enc(roomId)}/state/${MEMBER_TYPE}/${enc(this.memberKey())}`, {}, { keepalive });
  }

  /**
   * Schedules the membership's withdrawal `delayMs` from now (MSC4140); the page restarts
   * it while it lives, so a closed tab or a crash ends the membership soon after.
   */
  async scheduleLeave(roomId, delayMs) {
    const path = `${v3}/rooms/${enc(roomId)}/state/${MEMBER_TYPE}/${enc(this.memberKey())}`;
    const answer = await this.request('PUT', `${path}?org.matrix.msc4140.delay=${delayMs}`, {});
    return answer.delay_id;
  }

  restartDelayed(delayId) {
    return this.request('POST', `${delayed}/${enc(delayId)}`, { action: 'restart' });
  }

  /** Sends a delayed event now; needs no token (the id is the secret), so it works on unload. */
  static sendDelayedNow(delayId) {
    return call('POST', `${delayed}/${enc(delayId)}/send`, { body: {}, keepalive: true });
  }

  async serviceUrl() {
    const answer = await this.request('GET', '/_matrix/client/unstable/org.matrix.msc4143/rtc/transports');
    const transport = (answer.rtc_transports || []).find((t) => t.type === 'livekit');
    if (!transport?.livekit_service_url) {
      throw new Error('this server offers no LiveKit transport for calls');
    }
    return transport.livekit_service_url.replace(/\/+$/, '');
  }

  /** A LiveKit token for the room's call: OpenID token → `{service}/sfu/get` → `{url, jwt}`. */
  async sfuToken(serviceUrl, roomId) {
    const openid = await this.request('POST', `${v3}/user/${enc(this.userId)}/openid/request_token`, {});
    return call('POST', `${serviceUrl}/sfu/get`, {
      body: { room: roomId, openid_token: openid, device_id: this.deviceId },
    });
  }

  muteAll(roomId) {
    return this.request('POST', `${myelin}/rooms/${enc(roomId)}/rtc/mute_all`, {});
  }

  /** Starts or stops the recording of the room's call (moderators). */
  recording(roomId, action) {
    return this.request('POST', `${myelin}/rooms/${enc(roomId)}/recording`, { action });
  }

  textMute(roomId, muted) {
    return this.request('PUT', `${myelin}/rooms/${enc(roomId)}/text_mute`, { muted });
  }

  kick(roomId, userId) {
    return this.request('POST', `${v3}/rooms/${enc(roomId)}/kick`, { user_id: userId, reason: 'Removed from the meeting' });
  }

  joinLink(roomId) {
    return this.request('POST', `${myelin}/rooms/${enc(roomId)}/join_link`, {});
  }

  /**
   * Follows one room with `/sync`: `onEvent(event, isState)` for each state and timeline
   * event, in order, then `onBatch()` once per sync answer. Runs until `signal` aborts;
   * retries after errors (stops on 401).
   */
  async follow(roomId, onEvent, signal, onBatch = () => {}) {
    const filter = JSON.stringify({
      room: { rooms: [roomId], timeline: { limit: 50 }, ephemeral: { not_types: ['*'] }, account_data: { not_types: ['*'] } },
      presence: { not_types: ['*'] },
      account_data: { not_types: ['*'] },
    });
    let since = null;
    while (!signal.aborted) {
      const query = new URLSearchParams({ filter, timeout: since ? '30000' : '0' });
      if (since) {
        query.set('since', since);
      }
      let answer;
      try {
        answer = await this.request('GET', `${v3}/sync?${query}`, undefined, { signal });
      } catch (e) {
        if (signal.aborted || e.status === 401) {
          return;
        }
        await new Promise((r) => setTimeout(r, 2000));
        continue;
      }
      since = answer.next_batch;
      const room = answer.rooms?.join?.[roomId];
      if (room) {
        for (const event of room.state?.events || []) {
          onEvent(event, true);
        }
        for (const event of room.timeline?.events || []) {
          onEvent(event, event.state_key !== undefined);
        }
      }
      if (answer.rooms?.leave?.[roomId]) {
        for (const event of answer.rooms.leave[roomId].timeline?.events || []) {
          onEvent(event, event.state_key !== undefined);
        }
      }
      onBatch();
    }
  }
}
