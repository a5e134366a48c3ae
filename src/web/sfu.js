// One session with the SFU: LiveKit signalling in its JSON form (`/rtc?format=json`) and
// the two peer connections LiveKit uses — "publisher" (our tracks, we offer) and
// "subscriber" (everyone else's, the SFU offers).
//
// Events (CustomEvent.detail):
//   participants  Map sid → ParticipantInfo (everyone else, as the SFU last told us)
//   track         {participantSid, trackSid, track, stream} a remote track arrived
//   speakers      [{sid, level, active}] changes of who is speaking
//   muted         {trackSid, muted} the SFU muted one of our tracks (a moderator's mute-all)
//   room          Room info (name, activeRecording, …)
//   closed        {reason} the session ended ('removed': the server took us out;
//                 'reconnect': the SFU asks us to join again with a new session, as it
//                 does when it lost media we still send — our local tracks keep running)

const JOIN_TIMEOUT_MS = 15_000;
const PUBLISH_TIMEOUT_MS = 10_000;

export class SfuSession extends EventTarget {
  constructor() {
    super();
    this.others = new Map();
    this.local = null;
    this.pending = new Map();
    this.published = new Map();
    this.negotiating = Promise.resolve();
    this.inbox = Promise.resolve();
    this.closed = false;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Opens the signalling socket with a LiveKit token and waits for the join answer. */
  connect(url, jwt) {
    const base = url.replace(/\/+$/, '');
    const query = new URLSearchParams({ access_token: jwt, format: 'json', auto_subscribe: '1', protocol: '16', sdk: 'js' });
    this.ws = new WebSocket(`${base}/rtc?${query}`);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the call server did not answer')), JOIN_TIMEOUT_MS);
      this.joined = (join) => {
        clearTimeout(timer);
        resolve(join);
      };
      this.joinFailed = (error) => {
        clearTimeout(timer);
        reject(error);
      };
      this.ws.onerror = () => {
        clearTimeout(timer);
        reject(new Error('cannot reach the call server'));
      };
      this.ws.onclose = () => {
        clearTimeout(timer);
        reject(new Error('the call server closed the connection'));
        this.close('the call server closed the connection');
      };
      this.ws.onmessage = (m) => {
        let message;
        try {
          message = JSON.parse(m.data);
        } catch {
          return;
        }
        // In order: a candidate must not overtake the offer it belongs to.
        this.inbox = this.inbox.then(() => this.receive(message)).catch((e) => console.error('signal handling failed', e));
      };
    });
  }

  send(message) {
    if (this.ws?.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
    }
  }

  async receive(m) {
    if (m.join) {
      this.start(m.join);
    } else if (m.offer) {
      await this.answerOffer(m.offer);
    } else if (m.answer) {
      await this.publisher.setRemoteDescription({ type: 'answer', sdp: m.answer.sdp });
      this.answered?.();
    } else if (m.trickle) {
      const pc = m.trickle.target === 'SUBSCRIBER' ? this.subscriber : this.publisher;
      const candidate = JSON.parse(m.trickle.candidateInit || '{}');
      await pc.addIceCandidate(candidate).catch((e) => console.warn('ICE candidate refused', e));
    } else if (m.update) {
      this.updateParticipants(m.update.participants || []);
    } else if (m.trackPublished) {
      this.pending.get(m.trackPublished.cid)?.(m.trackPublished.track);
    } else if (m.mute) {
      this.emit('muted', { trackSid: m.mute.sid, muted: Boolean(m.mute.muted) });
    } else if (m.speakersChanged) {
      this.emit('speakers', m.speakersChanged.speakers || []);
    } else if (m.roomUpdate) {
      this.emit('room', m.roomUpdate.room || {});
    } else if (m.leave) {
      if (m.leave.reason === 'PARTICIPANT_REMOVED') {
        this.close('removed');
      } else if (m.leave.canReconnect || m.leave.action === 'RECONNECT') {
        this.close('reconnect');
      } else {
        this.close('the call ended');
      }
    }
  }

  start(join) {
    this.local = join.participant;
    const iceServers = (join.iceServers || []).map((s) => ({
      urls: s.urls,
      username: s.username || undefined,
      credential: s.credential || undefined,
    }));
    const config = { iceServers, bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };
    this.publisher = new RTCPeerConnection(config);
    this.subscriber = new RTCPeerConnection(config);
    for (const [pc, target] of [[this.publisher, 'PUBLISHER'], [this.subscriber, 'SUBSCRIBER']]) {
      pc.onicecandidate = (e) => {
        if (e.candidate) {
          this.send({ trickle: { candidateInit: JSON.stringify(e.candidate.toJSON()), target } });
        }
      };
    }
    this.subscriber.ontrack = (e) => {
      // The SFU names each forwarded stream "{participantSid}|{trackSid}".
      const stream = e.streams[0];
      const [participantSid, trackSid] = (stream?.id || '').split('|');
      this.emit('track', { participantSid, trackSid: trackSid || e.track.id, track: e.track, stream });
    };
    const interval = Math.max(5, Number(join.pingInterval) || 10) * 1000;
    this.pinger = setInterval(() => this.send({ ping: String(Date.now()) }), interval);
    this.emit('room', join.room || {});
    this.updateParticipants(join.otherParticipants || []);
    this.joined?.(join);
  }

  updateParticipants(list) {
    for (const p of list) {
      if (p.sid === this.local?.sid) {
        continue;
      }
      if (p.state === 'DISCONNECTED') {
        this.others.delete(p.sid);
      } else {
        this.others.set(p.sid, p);
      }
    }
    this.emit('participants', this.others);
  }

  async answerOffer(offer) {
    await this.subscriber.setRemoteDescription({ type: 'offer', sdp: offer.sdp });
    const answer = await this.subscriber.createAnswer();
    await this.subscriber.setLocalDescription(answer);
    this.send({ answer: { type: 'answer', sdp: this.subscriber.localDescription.sdp, id: offer.id } });
  }

  /**
   * Publishes a local track: announce it (addTrack), wait for the SFU's track info, add it
   * to the publisher connection and renegotiate. Resolves to the track's sid.
   */
  async publish(track, stream, source, muted = false) {
    const cid = track.id;
    const settings = track.getSettings?.() || {};
    const info = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the call server did not accept the track')), PUBLISH_TIMEOUT_MS);
      this.pending.set(cid, (t) => {
        clearTimeout(timer);
        if (t) {
          resolve(t);
        } else {
          reject(new Error('the call session closed'));
        }
      });
      this.send({
        addTrack: {
          cid,
          name: source.toLowerCase(),
          type: track.kind === 'audio' ? 'AUDIO' : 'VIDEO',
          source,
          muted,
          width: settings.width || 0,
          height: settings.height || 0,
        },
      });
    });
    this.pending.delete(cid);
    const transceiver = this.publisher.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    this.published.set(info.sid, { track, transceiver, source });
    await this.negotiate();
    return info.sid;
  }

  /** Stops publishing a track (screen share ends) and renegotiates. */
  async unpublish(trackSid) {
    const entry = this.published.get(trackSid);
    if (!entry) {
      return;
    }
    this.published.delete(trackSid);
    entry.track.stop();
    this.publisher.removeTrack(entry.transceiver.sender);
    await this.negotiate();
  }

  /** One publisher offer/answer at a time. */
  negotiate() {
    // A failed round must not stop the ones after it.
    this.negotiating = this.negotiating.catch(() => {}).then(async () => {
      const offer = await this.publisher.createOffer();
      await this.publisher.setLocalDescription(offer);
      const done = new Promise((resolve) => {
        this.answered = resolve;
      });
      this.send({ offer: { type: 'offer', sdp: this.publisher.localDescription.sdp } });
      await Promise.race([done, new Promise((r) => setTimeout(r, PUBLISH_TIMEOUT_MS))]);
    });
    return this.negotiating;
  }

  /** Tells the others a track of ours is muted or not (the media keeps flowing, silent/black). */
  setMuted(trackSid, muted) {
    this.send({ mute: { sid: trackSid, muted } });
  }

  /** Leaves the room and closes everything. */
  leave() {
    this.send({ leave: { reason: 'CLIENT_INITIATED' } });
    this.close('left');
  }

  /**
   * Ends the session: the connections close and whatever waits on them (the join, a
   * publication, a negotiation) gives up at once. The local tracks are the caller's: they
   * keep running (a new session may publish them again).
   */
  close(reason) {
    if (this.closed) {
      return;
    }
    this.closed = true;
    this.closedFor = reason;
    clearInterval(this.pinger);
    this.joinFailed?.(new Error(`the call session closed (${reason})`));
    for (const settle of this.pending.values()) {
      settle(null);
    }
    this.answered?.();
    this.publisher?.close();
    this.subscriber?.close();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) {
      this.ws.onclose = null;
      this.ws.close();
    }
    this.emit('closed', { reason });
  }
}
