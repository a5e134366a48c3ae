// The side panel: the room as Matrix tells it — members (names, temporary participants,
// power levels, text mute) — the participant list, and the text chat.

const MODERATOR = 50;

export class Panel {
  /**
   * `elements`: {messages, input, send, mutedNote, participants}; `actions`:
   * {send(body), kick(userId)}; `me`: our user id.
   */
  constructor(elements, actions, me) {
    this.el = elements;
    this.actions = actions;
    this.me = me;
    this.members = new Map();
    this.levels = {};
    this.seen = new Set();
    this.inCall = new Map();
    this.recording = {};
    this.onChange = () => {};
    this.el.send.addEventListener('click', () => this.submit());
    this.el.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey) {
        e.preventDefault();
        this.submit();
      }
    });
  }

  name(userId) {
    return this.members.get(userId)?.name || userId;
  }

  level(userId) {
    const users = this.levels.users || {};
    return Number(users[userId] ?? this.levels.users_default ?? 0);
  }

  isModerator(userId = this.me) {
    return this.level(userId) >= MODERATOR;
  }

  /** Messages need more power than ours: a moderator muted the chat. */
  textMuted() {
    return Number(this.levels.events_default ?? 0) >= MODERATOR;
  }

  /** The room's `io.myelin.recording` state says a recording is running. */
  recordingActive() {
    return this.recording.active === true;
  }

  /** Why the last recording ended without a video, if it did. */
  recordingError() {
    return this.recording.active === false && typeof this.recording.error === 'string' ? this.recording.error : '';
  }

  mayChat() {
    const needed = Number(this.levels.events?.['m.room.message'] ?? this.levels.events_default ?? 0);
    return this.level(this.me) >= needed;
  }

  /** One event from the room's sync, in order. */
  onEvent(event) {
    if (event.event_id && this.seen.has(event.event_id)) {
      return;
    }
    if (event.event_id) {
      this.seen.add(event.event_id);
    }
    if (event.type === 'm.room.member') {
      const content = event.content || {};
      this.members.set(event.state_key, {
        name: content.displayname || event.state_key,
        membership: content.membership,
        temporary: content['io.myelin.temporary'] === true,
      });
      this.renderParticipants();
      this.onChange(event);
    } else if (event.type === 'm.room.power_levels' && event.state_key === '') {
      this.levels = event.content || {};
      this.renderParticipants();
      this.renderComposer();
      this.onChange(event);
    } else if (event.type === 'io.myelin.recording' && event.state_key === '') {
      this.recording = event.content || {};
      this.onChange(event);
    } else if (event.type === 'm.room.message' && event.state_key === undefined) {
      this.addMessage(event);
    }
  }

  addMessage(event) {
    const body = event.content?.body;
    if (typeof body !== 'string') {
      return;
    }
    const item = document.createElement('li');
    item.dataset.testid = 'chat-message';
    item.dataset.sender = event.sender;
    const who = document.createElement('span');
    who.className = 'sender';
    who.textContent = this.name(event.sender);
    const text = document.createElement('span');
    text.className = 'body';
    text.textContent = body;
    const time = document.createElement('time');
    const at = new Date(event.origin_server_ts || Date.now());
    time.dateTime = at.toISOString();
    time.textContent = at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    item.append(who, time, text);
    this.el.messages.append(item);
    this.el.messages.scrollTop = this.el.messages.scrollHeight;
  }

  async submit() {
    const body = this.el.input.value.trim();
    if (!body) {
      return;
    }
    this.el.send.disabled = true;
    try {
      await this.actions.send(body);
      this.el.input.value = '';
    } catch (e) {
      this.el.mutedNote.textContent = `Not sent: ${e.message}`;
    } finally {
      this.renderComposer();
    }
  }

  renderComposer() {
    const allowed = this.mayChat();
    this.el.input.disabled = !allowed;
    this.el.send.disabled = !allowed;
    this.el.mutedNote.textContent = allowed
      ? this.textMuted()
        ? 'Messages are muted for participants.'
        : ''
      : 'A moderator has muted messages.';
  }

  /** Who is in the call now: user id → number of their devices connected. */
  setInCall(inCall) {
    this.inCall = inCall;
    this.renderParticipants();
  }

  renderParticipants() {
    const list = this.el.participants;
    list.replaceChildren();
    const ids = [...this.inCall.keys()].sort((a, b) => this.name(a).localeCompare(this.name(b)));
    for (const userId of ids) {
      const member = this.members.get(userId);
      const item = document.createElement('li');
      item.dataset.participant = userId;
      const name = document.createElement('span');
      name.textContent = this.name(userId) + (userId === this.me ? ' (you)' : '');
      item.append(name);
      if (member?.temporary) {
        const tag = document.createElement('span');
        tag.className = 'tag';
        tag.textContent = 'temporary';
        item.append(tag);
      }
      if (this.isModerator(userId)) {
        const tag = document.createElement('span');
        tag.className = 'tag moderator';
        tag.textContent = this.level(userId) >= 100 ? 'owner' : 'moderator';
        item.append(tag);
      }
      if (userId !== this.me && this.isModerator() && this.level(userId) < this.level(this.me)) {
        const remove = document.createElement('button');
        remove.className = 'small';
        remove.dataset.testid = 'remove-participant';
        remove.textContent = 'Remove';
        remove.addEventListener('click', () => this.actions.kick(userId));
        item.append(remove);
      }
      list.append(item);
    }
  }
}
