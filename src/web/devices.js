// Camera, microphone and speaker: opening them with the chosen device, listing the
// choices, the microphone level meter and the speaker test tone.

/** A sentence for a getUserMedia failure. */
export function explain(error, what = 'camera or microphone') {
  switch (error?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return `Permission to use the ${what} was denied. Allow it in the browser's site settings, then reload.`;
    case 'NotFoundError':
    case 'OverconstrainedError':
      return `No ${what} was found.`;
    case 'NotReadableError':
      return `The ${what} is in use by another application.`;
    default:
      return `The ${what} cannot be used: ${error?.message || error}`;
  }
}

function constraint(id) {
  return id ? { deviceId: { exact: id } } : true;
}

/**
 * Opens the microphone and camera (either may be missing or refused): `{stream, problems}`,
 * the stream holding what could be opened and `problems` the sentences for the rest.
 */
export async function openMedia({ micId, cameraId, audio = true, video = true }) {
  if (!navigator.mediaDevices?.getUserMedia) {
    return { stream: new MediaStream(), problems: ['This browser cannot use a camera or microphone here (it needs HTTPS).'] };
  }
  if (!audio && !video) {
    return { stream: new MediaStream(), problems: [] };
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: audio && constraint(micId),
      video: video && constraint(cameraId),
    });
    return { stream, problems: [] };
  } catch (error) {
    if (error?.name === 'NotAllowedError' || !(audio && video)) {
      return { stream: new MediaStream(), problems: [explain(error, audio && video ? 'camera and microphone' : audio ? 'microphone' : 'camera')] };
    }
  }
  // Together they failed: one of them may still work alone.
  const stream = new MediaStream();
  const problems = [];
  for (const [kind, id, what] of [['audio', micId, 'microphone'], ['video', cameraId, 'camera']]) {
    try {
      const one = await navigator.mediaDevices.getUserMedia({ [kind]: constraint(id) });
      one.getTracks().forEach((t) => stream.addTrack(t));
    } catch (error) {
      problems.push(explain(error, what));
    }
  }
  return { stream, problems };
}

/** The devices to choose from (labels are known once permission was given). */
export async function listDevices() {
  const all = (await navigator.mediaDevices?.enumerateDevices?.()) || [];
  const of = (kind, fallback) =>
    all
      .filter((d) => d.kind === kind && d.deviceId)
      .map((d, i) => ({ id: d.deviceId, label: d.label || `${fallback} ${i + 1}` }));
  return {
    cameras: of('videoinput', 'Camera'),
    mics: of('audioinput', 'Microphone'),
    speakers: of('audiooutput', 'Speaker'),
  };
}

/** Calls `onLevel(0..1)` about ten times a second with the stream's audio level; returns a stop function. */
export function levelMeter(stream, onLevel) {
  if (stream.getAudioTracks().length === 0) {
    onLevel(0);
    return () => {};
  }
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 512;
  const source = context.createMediaStreamSource(stream);
  source.connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) {
      sum += s * s;
    }
    // RMS, scaled so speech reaches the upper half.
    onLevel(Math.min(1, Math.sqrt(sum / samples.length) * 4));
  }, 100);
  context.resume().catch(() => {});
  return () => {
    clearInterval(timer);
    source.disconnect();
    context.close().catch(() => {});
  };
}

/** Routes an audio or video element to the chosen speaker where the browser allows it. */
export async function useSpeaker(element, speakerId) {
  if (speakerId && typeof element.setSinkId === 'function') {
    await element.setSinkId(speakerId).catch((e) => console.warn('cannot choose the speaker', e));
  }
}

/** Plays a short tone on the chosen speaker. */
export async function testTone(speakerId) {
  const context = new AudioContext();
  const oscillator = context.createOscillator();
  const gain = context.createGain();
  const sink = context.createMediaStreamDestination();
  oscillator.frequency.value = 660;
  gain.gain.value = 0.2;
  oscillator.connect(gain).connect(sink);
  const audio = new Audio();
  audio.srcObject = sink.stream;
  await useSpeaker(audio, speakerId);
  oscillator.start();
  await audio.play().catch(() => {});
  await new Promise((r) => setTimeout(r, 700));
  oscillator.stop();
  audio.srcObject = null;
  await context.close().catch(() => {});
}
