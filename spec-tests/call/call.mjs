// Browser call test driver: two headless Chromium pages run livekit-client against Myelin's
// token service and embedded SFU, and this script checks what each page sees.
//
// Input: env MYELIN_CALL_CONFIG, JSON
//   {homeserver, serviceUrl, roomId, chromium,
//    alice: {userId, deviceId, accessToken, openidToken},
//    bob:   {userId, deviceId, accessToken, openidToken}}
// alice must be a moderator of the room (she created it). Output: one JSON line on stdout
// (the summary); progress and page logs on stderr. Exit 0 only if every check passed.
//
// Checks: both join through /sfu/get; each subscribes to the other's audio and video;
// inbound-rtp bytes and decoded video frames rise on both sides; a reliable data packet
// goes each way; alice's own mute reaches bob; alice's "mute for all" (homeserver →
// SFU) mutes bob's microphone as seen by bob's page and by alice's, and not alice's own;
// bob leaves and alice sees him go.

import { chromium } from 'playwright-core';

import { localTrack, openPage, remoteOf, remoteTrack, run, seen, servePage } from './driver.mjs';

const { summary, progress, finish, hardTimeout, step, until } = run({
  tag: 'call',
  what: 'the call test',
  hardTimeoutMs: 90_000,
  stepTimeoutMs: 20_000,
});

async function main() {
  const config = JSON.parse(process.env.MYELIN_CALL_CONFIG ?? 'null');
  if (!config) {
    throw new Error('MYELIN_CALL_CONFIG (JSON) is not set');
  }
  const { server, url: pageUrl } = await servePage();
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
      '--allow-loopback-in-peer-connection',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  const pages = {};
  try {
    summary.browser = browser.version();
    const users = { alice: config.alice, bob: config.bob };
    for (const name of Object.keys(users)) {
      pages[name] = await openPage(browser, name, pageUrl);
    }
    step('pages loaded', { pageUrl });

    // Join: token from /sfu/get, connect, publish camera and microphone.
    const joined = {};
    for (const [name, user] of Object.entries(users)) {
      joined[name] = await pages[name].evaluate((args) => window.call.join(args), {
        serviceUrl: config.serviceUrl,
        room: config.roomId,
        openidToken: user.openidToken,
        deviceId: user.deviceId,
        debug: !!process.env.MYELIN_CALL_DEBUG,
      });
      step(`${name} joined`, joined[name]);
    }
    const identity = { alice: joined.alice.identity, bob: joined.bob.identity };
    const other = { alice: 'bob', bob: 'alice' };
    const state = (name) => pages[name].evaluate(() => window.call.state());
    const stats = (name) => pages[name].evaluate(() => window.call.stats());
    summary.identities = identity;
    for (const name of ['alice', 'bob']) {
      if (identity[name] !== `${users[name].userId}:${users[name].deviceId}`) {
        throw new Error(`${name} joined as ${identity[name]}, not as userId:deviceId`);
      }
    }

    // Each side subscribes to the other's audio and video.
    for (const name of ['alice', 'bob']) {
      await until(`${name} subscribed to ${other[name]}'s audio and video`, async () => {
        const s = await state(name);
        const o = identity[other[name]];
        return remoteTrack(s, o, 'audio')?.subscribed && remoteTrack(s, o, 'video')?.subscribed ? s : { done: false, s };
      });
      step(`${name} subscribed to ${other[name]}'s audio and video`);
    }

    // Media flows: inbound bytes (audio and video) and decoded video frames keep rising.
    const media = {};
    const counters = async (name) => {
      const list = await stats(name);
      const o = identity[other[name]];
      const of = (kind) => list.find((e) => e.identity === o && e.kind === kind) ?? {};
      return {
        audioBytes: of('audio').bytesReceived ?? 0,
        videoBytes: of('video').bytesReceived ?? 0,
        framesDecoded: of('video').framesDecoded ?? 0,
      };
    };
    for (const name of ['alice', 'bob']) {
      const first = await until(`${name} receiving ${other[name]}'s media`, async () => {
        const c = await counters(name);
        return c.audioBytes > 0 && c.videoBytes > 0 && c.framesDecoded > 0 ? c : { done: false, c };
      });
      const later = await until(`${name}'s inbound counters rising`, async () => {
        const c = await counters(name);
        const rising =
          c.audioBytes > first.audioBytes && c.videoBytes > first.videoBytes && c.framesDecoded >= first.framesDecoded + 10;
        return rising ? c : { done: false, first, c };
      });
      media[name] = { first, later };
      step(`${name} receives ${other[name]}'s audio and video`, later);
    }
    summary.media = media;

    // Data packets, reliable, both ways.
    for (const [from, to] of [['alice', 'bob'], ['bob', 'alice']]) {
      const text = `hello from ${from} ${Date.now()}`;
      await pages[from].evaluate((t) => window.call.sendData(t), text);
      await until(`${to} receiving ${from}'s data packet`, async () => {
        const s = await state(to);
        return seen(s, 'data', { identity: identity[from], text, reliable: true, topic: 'myelin-call-test' });
      });
      step(`${to} received ${from}'s data packet`);
    }

    // Alice mutes her own microphone; bob sees it; she unmutes and bob sees that too.
    await pages.alice.evaluate(() => window.call.setMicMuted(true));
    await until("bob seeing alice's microphone muted", async () => {
      const s = await state('bob');
      return seen(s, 'trackMuted', { identity: identity.alice, trackKind: 'audio' }) &&
        remoteTrack(s, identity.alice, 'audio')?.muted === true;
    });
    step("bob sees alice's mute");
    await pages.alice.evaluate(() => window.call.setMicMuted(false));
    await until("bob seeing alice's microphone unmuted", async () => {
      const s = await state('bob');
      return seen(s, 'trackUnmuted', { identity: identity.alice, trackKind: 'audio' }) &&
        remoteTrack(s, identity.alice, 'audio')?.muted === false;
    });
    step("bob sees alice's unmute");

    // Mute for all: alice (the room's creator, a moderator) asks the homeserver, which has
    // the SFU mute everyone else's audio; bob's page is told and so is alice's.
    const resp = await fetch(
      `${config.homeserver}/_matrix/client/unstable/io.myelin/rooms/${encodeURIComponent(config.roomId)}/rtc/mute_all`,
      {
        method: 'POST',
        headers: { Authorization: `Bearer ${config.alice.accessToken}`, 'Content-Type': 'application/json' },
        body: '{}',
      },
    );
    const muteAll = await resp.json();
    if (resp.status !== 200 || JSON.stringify(muteAll.muted) !== JSON.stringify([identity.bob])) {
      throw new Error(`mute_all answered ${resp.status} ${JSON.stringify(muteAll)}; expected {"muted": ["${identity.bob}"]}`);
    }
    summary.muteAll = muteAll;
    await until("bob's page seeing its microphone muted by the server", async () => {
      const s = await state('bob');
      return seen(s, 'trackMuted', { identity: identity.bob, trackKind: 'audio' }) && localTrack(s, 'audio')?.muted === true;
    });
    step("bob's microphone muted by mute_all (seen by bob)");
    await until("alice seeing bob's microphone muted", async () => {
      const s = await state('alice');
      return seen(s, 'trackMuted', { identity: identity.bob, trackKind: 'audio' }) &&
        remoteTrack(s, identity.bob, 'audio')?.muted === true;
    });
    step("bob's microphone muted by mute_all (seen by alice)");
    const aliceAfter = await state('alice');
    const bobAfter = await state('bob');
    if (localTrack(aliceAfter, 'audio')?.muted !== false || remoteTrack(bobAfter, identity.alice, 'audio')?.muted !== false) {
      throw new Error(`mute_all muted the moderator too: ${JSON.stringify({ aliceAfter, bobAfter })}`);
    }
    if (localTrack(bobAfter, 'video')?.muted !== false) {
      throw new Error(`mute_all muted bob's camera: ${JSON.stringify(bobAfter.local)}`);
    }

    // Bob leaves; alice sees him go.
    await pages.bob.evaluate(() => window.call.leave());
    await until("alice seeing bob leave", async () => {
      const s = await state('alice');
      return seen(s, 'participantDisconnected', { identity: identity.bob }) && !remoteOf(s, identity.bob);
    });
    step('alice sees bob leave');
    summary.events = { alice: (await state('alice')).events, bob: (await state('bob')).events };
    server.close();
  } catch (e) {
    // What each page saw, to tell a signalling problem from a media one.
    summary.diagnostics = {};
    for (const [name, page] of Object.entries(pages)) {
      summary.diagnostics[name] = await page
        .evaluate(async () => ({
          state: window.call.state(),
          inbound: await window.call.stats(),
          outbound: await window.call.publisherStats(),
        }))
        .catch((err) => String(err));
    }
    throw e;
  } finally {
    await browser.close().catch(() => {});
  }
}

main().then(
  () => {
    clearTimeout(hardTimeout);
    finish(0);
  },
  (e) => finish(1, e?.stack ?? String(e)),
);
