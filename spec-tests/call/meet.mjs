// Meeting page test driver: three headless Chromium pages open a virtual room's join link
// (Myelin Meet, served by the server itself) — two guests and one signed-in moderator —
// and this script drives them only through the page's data-testid hooks.
//
// Input: env MYELIN_MEET_CONFIG, JSON
//   {chromium, joinUrl, roomName, member: {user, password, userId}, screenshots}
// `screenshots` is a directory for meet-lobby.png and meet-grid.png; or, for the
// Element Call scenario, {scenario: "livekit", chromium, joinUrl, roomId, serviceUrl,
// leo: {userId, deviceId, openidToken}}: one guest on the page and one member running
// livekit-client (Element Call's engine, call.mjs's page.js) in the same call, where the
// SFU (a test failpoint losing one of the guest's streams) also asks the page to
// reconnect and the call goes on; or the
// recording scenario (see `recording` below). Output: one JSON line
// on stdout (the summary); progress and page logs on stderr. Exit 0 only if every check
// passed.
//
// Checks: the lobby shows the room, the camera preview plays and the microphone meter
// moves; the guests join with a name, the member signs in and joins; each page shows three
// tiles and decoded video frames rising on the two remote ones, the speakers highlighted
// (the fake microphones play a steady tone); chat messages arrive both
// ways; the participant list marks the guests temporary; the moderator's controls show
// only for the moderator; text mute disables the guests' composer and back; mute-all
// shows the guests muted on every page (not the moderator); a guest who leaves and one
// the moderator removes disappear from the others' grids.

import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { chromium } from 'playwright-core';

import { openPage as openLoggedPage, run, servePage } from './driver.mjs';

const { summary, progress, finish, hardTimeout, step, until } = run({
  tag: 'meet',
  what: 'the meeting page test',
  hardTimeoutMs: 150_000,
  stepTimeoutMs: 25_000,
  summary: { users: {} },
});

const byId = (id) => `[data-testid="${id}"]`;

const openPage = (browser, name, url) =>
  openLoggedPage(browser, name, url, { viewport: { width: 1280, height: 800 } });

/** What a page's grid shows: [{participant, muted, frames}] per tile. */
function tiles(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('[data-testid="tile"]')].map((t) => ({
      participant: t.dataset.participant,
      muted: t.dataset.muted,
      local: t.classList.contains('local'),
      frames: t.querySelector('video')?.getVideoPlaybackQuality?.().totalVideoFrames ?? 0,
    })),
  );
}

async function ownUserId(page) {
  return page.evaluate(() => JSON.parse(localStorage.getItem('myelin.meet.session') || '{}').userId);
}

async function chatBodies(page) {
  return page.$$eval(byId('chat-message'), (items) => items.map((i) => i.querySelector('.body')?.textContent));
}

/**
 * A WAV file of a steady 440 Hz tone (48 kHz, mono, 16-bit): the fake microphones play it
 * in a loop, so every participant keeps "speaking" (Chromium's own fake microphone only
 * beeps now and then, too rarely for speaker detection).
 */
async function toneFile() {
  const rate = 48_000;
  const samples = rate * 2;
  const data = Buffer.alloc(samples * 2);
  for (let i = 0; i < samples; i++) {
    data.writeInt16LE(Math.round(Math.sin((2 * Math.PI * 440 * i) / rate) * 12_000), i * 2);
  }
  const header = Buffer.alloc(44);
  header.write('RIFF', 0);
  header.writeUInt32LE(36 + data.length, 4);
  header.write('WAVE', 8);
  header.write('fmt ', 12);
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28);
  header.writeUInt16LE(2, 32);
  header.writeUInt16LE(16, 34);
  header.write('data', 36);
  header.writeUInt32LE(data.length, 40);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'myelin-meet-'));
  const file = path.join(dir, 'tone.wav');
  await writeFile(file, Buffer.concat([header, data]));
  return file;
}

async function main() {
  const config = JSON.parse(process.env.MYELIN_MEET_CONFIG ?? 'null');
  if (!config) {
    throw new Error('MYELIN_MEET_CONFIG (JSON) is not set');
  }
  const browser = await chromium.launch({
    executablePath: config.chromium,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${await toneFile()}`,
      '--allow-loopback-in-peer-connection',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  try {
    summary.browser = browser.version();
    if (config.scenario === 'livekit') {
      await withLivekit(browser, config);
    } else if (config.scenario === 'recording') {
      await recording(browser, config);
    } else {
      await meeting(browser, config);
    }
  } finally {
    await browser.close().catch(() => {});
  }
}

/** Guest joins on the page (its name typed in, Enter to join). */
async function guestJoins(browser, name, displayName, url) {
  const page = await openPage(browser, name, url);
  await until(`${name}'s lobby`, async () => !(await page.$eval(byId('join'), (b) => b.disabled)));
  await page.fill(byId('display-name'), displayName);
  await page.click(byId('join'));
  return page;
}

async function meeting(browser, config) {
  await mkdir(config.screenshots, { recursive: true });
  // --- Lobby ---
  const grace = await openPage(browser, 'grace', config.joinUrl);
  await until('the lobby to show the room name', async () =>
    (await grace.textContent(byId('room-name'))) === config.roomName);
  await until('the camera preview to play', () =>
    grace.$eval(byId('preview'), (v) => v.videoWidth > 0 && v.currentTime > 0));
  const level = await until('the microphone meter to move', () =>
    grace.$eval(byId('mic-level'), (m) => (m.value > 0.005 ? m.value : 0)), 10_000);
  const devices = await grace.evaluate(() => ({
    cameras: document.querySelector('[data-testid="camera-select"]').options.length,
    mics: document.querySelector('[data-testid="mic-select"]').options.length,
    joinEnabled: !document.querySelector('[data-testid="join"]').disabled,
  }));
  if (devices.cameras < 1 || devices.mics < 1 || !devices.joinEnabled) {
    throw new Error(`lobby devices: ${JSON.stringify(devices)}`);
  }
  step('lobby shows the room, the preview and the microphone level', { level, ...devices });
  await grace.screenshot({ path: path.join(config.screenshots, 'meet-lobby.png') });

  // Joining without a name is refused with a message, nothing happens.
  await grace.click(byId('join'));
  await until('a message asking for a name', async () =>
    /name/i.test((await grace.textContent('#lobby-message')) || ''));
  step('joining without a name asks for one');

  await grace.fill(byId('display-name'), 'Grace Guest');
  await grace.click(byId('join'));
  const gus = await guestJoins(browser, 'gus', 'Gus Guest', config.joinUrl);
  const mia = await openPage(browser, 'member', config.joinUrl);
  await until('the member\'s lobby', async () => !(await mia.$eval(byId('join'), (b) => b.disabled)));
  await mia.fill(byId('sign-in-user'), config.member.user);
  await mia.fill(byId('sign-in-password'), config.member.password);
  await mia.click(byId('sign-in'));
  await until('the member to be signed in', () => mia.isVisible('#as-user'));
  await mia.click(byId('join'));
  const pages = { grace, gus, member: mia };
  const users = {
    grace: await until('grace\'s session', () => ownUserId(grace)),
    gus: await until('gus\'s session', () => ownUserId(gus)),
    member: config.member.userId,
  };
  summary.users = users;
  if (users.grace === users.gus || !users.grace.startsWith('@')) {
    throw new Error(`guest sessions: ${JSON.stringify(users)}`);
  }
  step('two guests and the member joined', users);

  // --- Video: three tiles, the two remote ones with frames rising ---
  for (const [name, page] of Object.entries(pages)) {
    const first = await until(`${name} to see three tiles with video`, async () => {
      const t = await tiles(page);
      const remote = t.filter((x) => !x.local);
      return t.length === 3 && remote.length === 2 && remote.every((x) => x.frames > 0) ? t : null;
    }, 40_000);
    const remoteUsers = first.filter((x) => !x.local).map((x) => x.participant).sort();
    const expected = Object.entries(users).filter(([n]) => n !== name).map(([, u]) => u).sort();
    if (JSON.stringify(remoteUsers) !== JSON.stringify(expected)) {
      throw new Error(`${name} sees ${JSON.stringify(remoteUsers)}, expected ${JSON.stringify(expected)}`);
    }
    await until(`${name}'s remote video frames to rise`, async () => {
      const later = await tiles(page);
      return later.filter((x) => !x.local).every((x) => {
        const before = first.find((f) => f.participant === x.participant);
        return x.frames > before.frames;
      });
    });
    step(`${name} sees the two others' video`);
  }

  // --- Active speaker: the fake microphones beep; the SFU's speaker updates light the
  // speaking tiles up ---
  const speaking = await until('a speaking tile on the member\'s page', () =>
    mia.$$eval(byId('tile'), (ts) => {
      const on = ts.filter((t) => t.classList.contains('speaking')).map((t) => t.dataset.participant);
      return on.length ? on : null;
    }),
  );
  step('the active speaker is highlighted', { speaking });

  // --- Chat both ways ---
  await grace.fill(byId('chat-input'), 'Hello from Grace');
  await grace.click(byId('chat-send'));
  for (const [name, page] of [['member', mia], ['gus', gus]]) {
    await until(`${name} to receive grace's message`, async () => (await chatBodies(page)).includes('Hello from Grace'));
  }
  await mia.fill(byId('chat-input'), 'Welcome, guests');
  await mia.press(byId('chat-input'), 'Enter');
  for (const [name, page] of [['grace', grace], ['gus', gus]]) {
    await until(`${name} to receive the member's message`, async () => (await chatBodies(page)).includes('Welcome, guests'));
  }
  step('chat messages arrive both ways');

  // --- Participant list and moderator controls ---
  const list = await until('the member\'s participant list to show the guests as temporary', async () => {
    const entries = await mia.$$eval(`${byId('participant-list')} li`, (items) =>
      items.map((i) => ({ user: i.dataset.participant, text: i.textContent })));
    const temporary = (u) => entries.find((e) => e.user === u)?.text.includes('temporary');
    return entries.length === 3 && temporary(users.grace) && temporary(users.gus) && !temporary(users.member) ? entries : null;
  });
  step('the participant list marks the guests temporary', { list });
  const controls = async (page) =>
    page.evaluate(() => ['mute-all', 'text-mute', 'copy-link'].map((id) => !document.querySelector(`[data-testid="${id}"]`).hidden));
  await until('the moderator controls on the member\'s page', async () => (await controls(mia)).every(Boolean));
  if ((await controls(grace)).some(Boolean)) {
    throw new Error('a guest sees moderator controls');
  }
  step('moderator controls show for the moderator only');

  // --- Text mute ---
  await mia.click(byId('text-mute'));
  await until('grace\'s composer to be disabled by text mute', () => grace.$eval(byId('chat-input'), (i) => i.disabled));
  await mia.click(byId('text-mute'));
  await until('grace\'s composer to be enabled again', () => grace.$eval(byId('chat-input'), (i) => !i.disabled));
  step('text mute disables the guests\' composer and back');

  // --- Mute everyone ---
  await mia.click(byId('mute-all'));
  for (const [name, page] of Object.entries(pages)) {
    await until(`${name} to see both guests muted`, async () => {
      const t = await tiles(page);
      const muted = (u) => t.find((x) => x.participant === u)?.muted === 'true';
      return muted(users.grace) && muted(users.gus) && !muted(users.member);
    });
  }
  step('mute-all shows both guests muted on every page, not the moderator');
  // Muted microphones send silence: the guests stop being speakers.
  await until('the muted guests to stop speaking on the member\'s page', async () =>
    mia.$$eval(
      byId('tile'),
      (ts, guests) => !ts.some((t) => guests.includes(t.dataset.participant) && t.classList.contains('speaking')),
      [users.grace, users.gus],
    ));
  step('muted guests stop being highlighted as speakers');
  await mia.screenshot({ path: path.join(config.screenshots, 'meet-grid.png') });

  // --- Leaving: the button, and a closed tab ---
  await gus.click(byId('leave'));
  await until('gus\'s page to say he left', () => gus.isVisible('#ended'));
  for (const [name, page] of [['member', mia], ['grace', grace]]) {
    await until(`${name} to see gus's tile go`, async () => !(await tiles(page)).some((x) => x.participant === users.gus));
  }
  step('a guest leaves and his tile goes');
  // The moderator removes the other guest from the participant list.
  await mia.click(`${byId('participant-list')} li[data-participant="${users.grace}"] ${byId('remove-participant')}`);
  await until('grace\'s page to say she was removed', async () =>
    (await grace.isVisible('#ended')) && /removed/i.test((await grace.textContent('#ended-title')) || ''));
  await until('the member to see grace\'s tile go', async () => !(await tiles(mia)).some((x) => x.participant === users.grace), 40_000);
  step('the moderator removes a guest and her tile goes');
  await mia.click(byId('leave'));
  await until('the member\'s page to say she left', () => mia.isVisible('#ended'));
  step('the member leaves');
}

// Serves call.mjs's livekit-client page (page.html, page.js, the UMD bundle) on 127.0.0.1.
/** What the page plays: one entry per remote audio element, and whether media arrives. */
function pageAudio(page) {
  return page.$$eval('#audio audio', (els) =>
    els.map((e) => {
      const track = e.srcObject?.getAudioTracks()[0];
      return { live: track?.readyState === 'live', flowing: track ? !track.muted : false, paused: e.paused };
    }),
  );
}

/** The sids of the tracks livekit-client (on `page`) knows of the participant `userId`. */
async function trackSidsOf(page, userId) {
  const s = await page.evaluate(() => window.call.state());
  return s.remote.filter((p) => p.identity.startsWith(`${userId}:`)).flatMap((p) => p.tracks.map((t) => t.sid));
}

/** Configures a server failpoint (test builds: `PUT /_myelin/test/failpoints/{name}`). */
async function setFailpoint(base, name, actions) {
  const url = `${base.replace(/\/+$/, '')}/_myelin/test/failpoints/${encodeURIComponent(name)}`;
  const res = await fetch(url, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ actions }) });
  if (!res.ok) {
    throw new Error(`failpoint ${name}: HTTP ${res.status} ${await res.text()}`);
  }
}

async function withLivekit(browser, config) {
  const { server, url: livekitUrl } = await servePage();
  try {
    const gina = await guestJoins(browser, 'gina', 'Gina Guest', config.joinUrl);
    const ginaId = await until('gina\'s session', () => ownUserId(gina));
    const leo = await openPage(browser, 'leo', livekitUrl);
    const joined = await leo.evaluate((args) => window.call.join(args), {
      serviceUrl: config.serviceUrl,
      room: config.roomId,
      openidToken: config.leo.openidToken,
      deviceId: config.leo.deviceId,
    });
    summary.users = { gina: ginaId, leo: config.leo.userId };
    step('a guest on the page and a livekit-client member joined', joined);

    // The page: leo's tile with video frames rising, and his audio playing.
    const first = await until('gina to see leo\'s video', async () => {
      const t = (await tiles(gina)).find((x) => x.participant === config.leo.userId);
      return t && t.frames > 0 ? t : null;
    }, 40_000);
    await until('leo\'s video frames to rise on the page', async () => {
      const t = (await tiles(gina)).find((x) => x.participant === config.leo.userId);
      return t && t.frames > first.frames;
    });
    await until('leo\'s audio to play on the page', async () => {
      const audio = await pageAudio(gina);
      return audio.length >= 1 && audio.every((a) => a.live && a.flowing && !a.paused) ? audio : null;
    });
    step('the page shows and plays the livekit-client member');

    // livekit-client: the guest's audio and video subscribed, bytes and frames rising.
    const counters = async () => {
      const list = await leo.evaluate(() => window.call.stats());
      const of = (kind) => list.find((e) => e.identity.startsWith(`${ginaId}:`) && e.kind === kind) ?? {};
      return { audioBytes: of('audio').bytesReceived ?? 0, framesDecoded: of('video').framesDecoded ?? 0 };
    };
    const before = await until('leo to receive gina\'s audio and video', async () => {
      const c = await counters();
      return c.audioBytes > 0 && c.framesDecoded > 0 ? c : null;
    }, 40_000);
    const after = await until('gina\'s media to keep arriving at leo', async () => {
      const c = await counters();
      return c.audioBytes > before.audioBytes && c.framesDecoded > before.framesDecoded + 5 ? c : null;
    });
    summary.media = { before, after };
    step('the livekit-client member receives the guest\'s audio and video', after);

    // Leo mutes his microphone in livekit-client: the page shows it on his tile.
    await leo.evaluate(() => window.call.setMicMuted(true));
    await until('gina to see leo muted', async () =>
      (await tiles(gina)).find((x) => x.participant === config.leo.userId)?.muted === 'true');
    step('a livekit-client mute shows on the page');

    // The SFU loses one of the guest's published streams while her page still sends it (a
    // test failpoint; webrtc-rs can do it by itself) and asks the page to reconnect: the
    // page joins again with a new session, publishes again, and the call goes on both ways.
    const oldSids = new Set(await trackSidsOf(leo, ginaId));
    await setFailpoint(config.serviceUrl, 'sfu.published_stream.lost', `return(${ginaId}:)`);
    const connections = () => gina.$eval(byId('call-status'), (e) => Number(e.dataset.connections || 0));
    await until('gina\'s page to join the SFU again', async () =>
      (await connections()) >= 2 && (await gina.$eval(byId('call-status'), (e) => e.textContent)) === '', 40_000);
    const fresh = async () => {
      const list = await leo.evaluate(() => window.call.stats());
      const of = (kind) =>
        list.find((e) => e.identity.startsWith(`${ginaId}:`) && e.kind === kind && !oldSids.has(e.sid)) ?? {};
      return { audioBytes: of('audio').bytesReceived ?? 0, framesDecoded: of('video').framesDecoded ?? 0 };
    };
    const again = await until('leo to receive gina\'s republished audio and video', async () => {
      const c = await fresh();
      return c.audioBytes > 0 && c.framesDecoded > 0 ? c : null;
    }, 40_000);
    await until('gina\'s republished media to keep arriving at leo', async () => {
      const c = await fresh();
      return c.audioBytes > again.audioBytes && c.framesDecoded > again.framesDecoded + 5;
    });
    let lastFrames = null;
    await until('leo\'s video frames to rise on gina\'s page again', async () => {
      const frames = (await tiles(gina)).find((x) => x.participant === config.leo.userId)?.frames ?? 0;
      const rising = lastFrames !== null && frames > lastFrames && frames > 0;
      lastFrames = frames;
      return rising;
    });
    step('the SFU asks the page to reconnect and the call goes on', { connections: await connections() });
    // The guest closes the tab: the page leaves the SFU and sends its scheduled
    // withdrawal of the call membership on the way out.
    await gina.close({ runBeforeUnload: true });
    await until('leo to see gina leave', async () => {
      const s = await leo.evaluate(() => window.call.state());
      return !s.remote.some((p) => p.identity.startsWith(`${ginaId}:`));
    });
    step('the guest closes the tab and livekit-client sees her go');
    await leo.evaluate(() => window.call.leave());
  } finally {
    server.close();
  }
}

/**
 * The recording scenario, {scenario: "recording", chromium, joinUrl, member, recordMs}: a
 * guest and the signed-in moderator meet; the moderator records for `recordMs` with the
 * page's record button. Both pages show the red dot while it runs, the recorder never
 * shows up as a tile, and the dot goes when the moderator stops. The test itself checks
 * the posted file.
 */
async function recording(browser, config) {
  const grace = await guestJoins(browser, 'grace', 'Grace Guest', config.joinUrl);
  const mia = await openPage(browser, 'member', config.joinUrl);
  await until('the member\'s lobby', async () => !(await mia.$eval(byId('join'), (b) => b.disabled)));
  await mia.fill(byId('sign-in-user'), config.member.user);
  await mia.fill(byId('sign-in-password'), config.member.password);
  await mia.click(byId('sign-in'));
  await until('the member to be signed in', () => mia.isVisible('#as-user'));
  await mia.click(byId('join'));
  const pages = { grace, member: mia };
  for (const [name, page] of Object.entries(pages)) {
    await until(`${name} to see two tiles with video`, async () => {
      const t = await tiles(page);
      return t.length === 2 && t.filter((x) => !x.local).every((x) => x.frames > 0);
    }, 40_000);
  }
  step('a guest and the moderator see each other');
  const recordVisible = (page) => page.$eval(byId('record'), (b) => !b.hidden);
  await until('the record button on the moderator\'s page', () => recordVisible(mia));
  if (await recordVisible(grace)) {
    throw new Error('the guest sees the record button');
  }
  await mia.click(byId('record'));
  const dot = (page) => page.$eval(byId('recording-indicator'), (d) => !d.hidden);
  for (const [name, page] of Object.entries(pages)) {
    await until(`${name}'s page to show the recording dot`, () => dot(page));
  }
  await until('the record button to offer stopping', async () =>
    (await mia.textContent(byId('record'))) === 'Stop recording');
  step('the moderator starts recording and both pages show the dot');
  const recordStarted = Date.now();
  // The recorder is a hidden participant: no third tile, ever.
  while (Date.now() - recordStarted < config.recordMs) {
    for (const [name, page] of Object.entries(pages)) {
      const count = (await tiles(page)).length;
      if (count !== 2) {
        throw new Error(`${name} sees ${count} tiles while recording: the recorder must stay hidden`);
      }
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  step('the recorder stays hidden');
  await mia.click(byId('record'));
  for (const [name, page] of Object.entries(pages)) {
    await until(`${name}'s page to drop the recording dot`, async () => !(await dot(page)));
  }
  step('the moderator stops recording and the dot goes', { recordedMs: Date.now() - recordStarted });
  for (const page of [grace, mia]) {
    await page.click(byId('leave'));
  }
}

main().then(
  () => {
    clearTimeout(hardTimeout);
    finish(0);
  },
  (e) => {
    clearTimeout(hardTimeout);
    finish(1, String(e?.stack || e));
  },
);
