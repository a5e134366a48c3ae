// One call participant in a browser page, driven by call.mjs through `window.call`.
// It gets its LiveKit token from Myelin's token service like Element Call does (OpenID
// token → POST {livekit_service_url}/sfu/get, a cross-origin request), joins with
// livekit-client, publishes the fake camera and microphone, and records what it sees.
/* global LivekitClient */
'use strict';

(() => {
  const { Room, RoomEvent, Track } = LivekitClient;
  const events = [];
  let room = null;

  const record = (event, detail) => events.push({ at: Date.now(), event, ...detail });
  const who = (participant) => participant?.identity ?? null;
  const micPublication = () => room.localParticipant.getTrackPublication(Track.Source.Microphone);

  async function join({ serviceUrl, room: roomId, openidToken, deviceId, debug }) {
    if (debug) {
      LivekitClient.setLogLevel('debug');
    }
    const resp = await fetch(`${serviceUrl}/sfu/get`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ room: roomId, openid_token: openidToken, device_id: deviceId }),
    });
    if (!resp.ok) {
      throw new Error(`/sfu/get answered ${resp.status}: ${await resp.text()}`);
    }
    const { url, jwt } = await resp.json();
    // adaptiveStream would pause video nobody looks at; the test wants every frame. 360p
    // keeps two simulcast layers (q and h) while sparing a small CI machine's CPU.
    room = new Room({
      adaptiveStream: false,
      dynacast: false,
      videoCaptureDefaults: { resolution: LivekitClient.VideoPresets.h360.resolution },
    });
    room
      .on(RoomEvent.ParticipantConnected, (p) => record('participantConnected', { identity: p.identity }))
      .on(RoomEvent.ParticipantDisconnected, (p) =>
        record('participantDisconnected', { identity: p.identity }),
      )
      .on(RoomEvent.TrackSubscribed, (track, pub, p) => {
        record('trackSubscribed', { identity: p.identity, trackKind: track.kind, sid: pub.trackSid });
        const el = track.attach();
        el.muted = true; // no audio device needed; decoding does not depend on it
        document.body.appendChild(el);
      })
      .on(RoomEvent.TrackMuted, (pub, p) =>
        record('trackMuted', { identity: who(p), trackKind: pub.kind, sid: pub.trackSid }),
      )
      .on(RoomEvent.TrackUnmuted, (pub, p) =>
        record('trackUnmuted', { identity: who(p), trackKind: pub.kind, sid: pub.trackSid }),
      )
      .on(RoomEvent.TrackUnpublished, (pub, p) =>
        record('trackUnpublished', { identity: p.identity, trackKind: pub.kind, sid: pub.trackSid }),
      )
      .on(RoomEvent.LocalTrackUnpublished, (pub) =>
        record('localTrackUnpublished', { trackKind: pub.kind, sid: pub.trackSid }),
      )
      .on(RoomEvent.DataReceived, (payload, p, kind, topic) =>
        record('data', {
          identity: who(p),
          text: new TextDecoder().decode(payload),
          reliable: kind === LivekitClient.DataPacket_Kind.RELIABLE,
          topic: topic ?? null,
        }),
      )
      .on(RoomEvent.Disconnected, (reason) => record('disconnected', { reason: reason ?? null }));
    await room.connect(url, jwt);
    await room.localParticipant.enableCameraAndMicrophone();
    return { url, identity: room.localParticipant.identity, sid: room.localParticipant.sid };
  }

  // What this page knows about the call right now.
  function state() {
    const local = [...room.localParticipant.trackPublications.values()].map((pub) => ({
      kind: pub.kind,
      sid: pub.trackSid,
      muted: pub.isMuted,
    }));
    const remote = [...room.remoteParticipants.values()].map((p) => ({
      identity: p.identity,
      tracks: [...p.trackPublications.values()].map((pub) => ({
        kind: pub.kind,
        sid: pub.trackSid,
        subscribed: pub.isSubscribed && !!pub.track,
        muted: pub.isMuted,
      })),
    }));
    return { state: room.state, identity: room.localParticipant.identity, local, remote, events };
  }

  // inbound-rtp counters of every subscribed remote track, from its RTCRtpReceiver.
  async function stats() {
    const out = [];
    for (const p of room.remoteParticipants.values()) {
      for (const pub of p.trackPublications.values()) {
        const receiver = pub.track?.receiver;
        if (!receiver) {
          continue;
        }
        const entry = { identity: p.identity, kind: pub.kind, sid: pub.trackSid };
        const counters = [
          'bytesReceived', 'packetsReceived', 'packetsLost', 'nackCount', 'pliCount',
          'framesReceived', 'framesDecoded', 'keyFramesDecoded', 'framesDropped',
        ];
        (await receiver.getStats()).forEach((s) => {
          if (s.type === 'inbound-rtp') {
            for (const c of counters) {
              entry[c] = (entry[c] ?? 0) + (s[c] ?? 0);
            }
            entry.frameWidth = s.frameWidth;
          }
        });
        out.push(entry);
      }
    }
    return out;
  }

  // outbound-rtp of this page's own tracks (per simulcast layer), for failure reports.
  async function publisherStats() {
    const out = [];
    for (const pub of room.localParticipant.trackPublications.values()) {
      const sender = pub.track?.sender;
      if (!sender) {
        continue;
      }
      (await sender.getStats()).forEach((s) => {
        if (s.type === 'outbound-rtp') {
          out.push({
            kind: pub.kind,
            rid: s.rid ?? null,
            ssrc: s.ssrc,
            packetsSent: s.packetsSent,
            framesEncoded: s.framesEncoded,
            pliCount: s.pliCount,
            nackCount: s.nackCount,
            qualityLimitationReason: s.qualityLimitationReason,
          });
        }
      });
    }
    return out;
  }

  // The ICE view of one peer connection's stats report: the selected candidate pair (its
  // local and remote candidates) and, for failure reports, every candidate and pair.
  function iceOf(report) {
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    const candidate = (id) => {
      const c = byId.get(id);
      return c && {
        candidateType: c.candidateType,
        protocol: c.protocol,
        relayProtocol: c.relayProtocol ?? null,
        address: c.address ?? c.ip,
        port: c.port,
        url: c.url ?? null,
      };
    };
    let selected = null;
    for (const s of byId.values()) {
      if (s.type === 'transport' && s.selectedCandidatePairId && byId.has(s.selectedCandidatePairId)) {
        selected = byId.get(s.selectedCandidatePairId);
      }
    }
    const pairs = [...byId.values()].filter((s) => s.type === 'candidate-pair');
    selected ??= pairs.find((s) => s.nominated && s.state === 'succeeded') ?? null;
    const pair = (s) => ({
      state: s.state,
      nominated: !!s.nominated,
      local: candidate(s.localCandidateId),
      remote: candidate(s.remoteCandidateId),
      bytesSent: s.bytesSent ?? 0,
      bytesReceived: s.bytesReceived ?? 0,
    });
    return {
      selected: selected && pair(selected),
      pairs: pairs.map(pair),
      localCandidates: [...byId.values()].filter((s) => s.type === 'local-candidate').map((s) => candidate(s.id)),
    };
  }

  // The ICE state of the publisher and subscriber peer connections (getStats).
  async function transports() {
    const pcs = room.engine?.pcManager;
    const out = {};
    for (const [name, transport] of [['publisher', pcs?.publisher], ['subscriber', pcs?.subscriber]]) {
      const pc = transport?.pc;
      out[name] = pc ? { connectionState: pc.connectionState, ...iceOf(await pc.getStats()) } : null;
    }
    return out;
  }

  async function sendData(text) {
    await room.localParticipant.publishData(new TextEncoder().encode(text), {
      reliable: true,
      topic: 'myelin-call-test',
    });
  }

  async function setMicMuted(muted) {
    const pub = micPublication();
    if (!pub?.track) {
      throw new Error('no published microphone');
    }
    if (muted) {
      await pub.track.mute();
    } else {
      await pub.track.unmute();
    }
  }

  async function leave() {
    await room.disconnect();
  }

  window.call = { join, state, stats, publisherStats, transports, sendData, setMicMuted, leave };
})();
