// The video grid: one tile per participant (video or initials, name, microphone state,
// speaking highlight) and the hidden audio elements that play everyone else.

import { useSpeaker } from './devices.js?v={{version}}';

function initials(name) {
  const words = name.replace(/^@/, '').split(/[\s:._-]+/).filter(Boolean);
  return words.slice(0, 2).map((w) => w[0].toUpperCase()).join('') || '?';
}

export class Grid {
  constructor(container, audioBox) {
    this.container = container;
    this.audioBox = audioBox;
    this.tiles = new Map();
    this.audio = new Map();
    this.speakerId = '';
  }

  /** Creates or updates a participant's tile. */
  upsert(key, { userId, name, audioMuted, videoStream, local = false }) {
    let tile = this.tiles.get(key);
    if (!tile) {
      const root = document.createElement('div');
      root.className = 'tile';
      root.dataset.testid = 'tile';
      const video = document.createElement('video');
      video.autoplay = true;
      video.playsInline = true;
      video.muted = true; // sound plays through the audio elements
      const avatar = document.createElement('div');
      avatar.className = 'avatar';
      const label = document.createElement('div');
      label.className = 'label';
      const mic = document.createElement('span');
      mic.className = 'mic';
      const nameEl = document.createElement('span');
      nameEl.className = 'name';
      label.append(mic, nameEl);
      root.append(video, avatar, label);
      if (local) {
        root.classList.add('local');
      }
      this.container.append(root);
      tile = { root, video, avatar, mic, nameEl, stream: null };
      this.tiles.set(key, tile);
      this.layout();
    }
    tile.root.dataset.participant = userId;
    tile.root.dataset.muted = String(Boolean(audioMuted));
    tile.mic.textContent = audioMuted ? 'muted' : '';
    tile.mic.hidden = !audioMuted;
    tile.mic.title = 'Microphone off';
    tile.nameEl.textContent = local ? `${name} (you)` : name;
    tile.avatar.textContent = initials(name);
    if (videoStream !== undefined && videoStream !== tile.stream) {
      tile.stream = videoStream;
      tile.video.srcObject = videoStream;
      if (videoStream) {
        tile.video.play().catch(() => {});
      }
    }
    tile.root.classList.toggle('no-video', !tile.stream || tile.stream.getVideoTracks().every((t) => !t.enabled || t.readyState === 'ended'));
  }

  /** Marks a tile whose camera is off (no video, or a muted video track). */
  setVideoOff(key, off) {
    this.tiles.get(key)?.root.classList.toggle('no-video', off);
  }

  remove(key) {
    const tile = this.tiles.get(key);
    if (tile) {
      tile.video.srcObject = null;
      tile.root.remove();
      this.tiles.delete(key);
      this.layout();
    }
  }

  keys() {
    return [...this.tiles.keys()];
  }

  /** Plays a remote audio track (on the chosen speaker). */
  addAudio(trackSid, track) {
    this.removeAudio(trackSid);
    const element = document.createElement('audio');
    element.autoplay = true;
    element.srcObject = new MediaStream([track]);
    this.audioBox.append(element);
    this.audio.set(trackSid, element);
    useSpeaker(element, this.speakerId).then(() => element.play().catch(() => {}));
    track.addEventListener('ended', () => this.removeAudio(trackSid));
  }

  /** Stops playing every remote audio track. */
  clearAudio() {
    for (const trackSid of [...this.audio.keys()]) {
      this.removeAudio(trackSid);
    }
  }

  removeAudio(trackSid) {
    const element = this.audio.get(trackSid);
    if (element) {
      element.srcObject = null;
      element.remove();
      this.audio.delete(trackSid);
    }
  }

  async setSpeaker(speakerId) {
    this.speakerId = speakerId;
    await Promise.all([...this.audio.values()].map((e) => useSpeaker(e, speakerId)));
  }

  /** Highlights the tiles of the participants speaking now. */
  setSpeaking(keys) {
    for (const [key, tile] of this.tiles) {
      tile.root.classList.toggle('speaking', keys.has(key));
    }
  }

  /** A square-ish grid: 1, 2×1, 2×2, 3×3 … up to 5×5 for 25 tiles. */
  layout() {
    const n = Math.max(1, this.tiles.size);
    const cols = Math.ceil(Math.sqrt(n));
    const rows = Math.ceil(n / cols);
    this.container.style.setProperty('--cols', String(cols));
    this.container.style.setProperty('--rows', String(rows));
  }

  clear() {
    for (const key of this.keys()) {
      this.remove(key);
    }
    this.clearAudio();
  }
}
