// Reach test driver: ONE call participant — livekit-client in headless Chromium — run in
// whatever network namespace this process was started in (`ip netns exec NS node
// reach.mjs`), so the browser's traffic meets that namespace's firewall. The test starts
// one driver per participant; they find each other through the SFU.
//
// Input: env MYELIN_REACH_CONFIG, JSON
//   {name, serviceUrl, roomId, chromium, deviceId, openidToken, other}
// where `other` is the identity (userId:deviceId) of the participant to expect. Output: one
// JSON line on stdout (the summary); progress and page logs on stderr. Exit 0 only if every
// check passed.
//
// Checks: joins through /sfu/get; subscribes to the other's audio and video; inbound audio
// bytes and decoded video frames rise. Then it records the selected ICE candidate pair of
// both peer connections (getStats) and tells the other it is done with a data packet; it
// leaves once it has the other's "done" too (or the other has left), so neither leaves
// while the other still checks.

import { chromium } from 'playwright-core';

import { openPage, remoteOf, remoteTrack, run, seen, servePage } from './driver.mjs';

const config = JSON.parse(process.env.MYELIN_REACH_CONFIG ?? 'null');
const me = config?.name ?? 'page';
const { summary, progress, finish, hardTimeout, step, until } = run({
  tag: `reach ${me}`,
  what: me,
  hardTimeoutMs: 75_000,
  stepTimeoutMs: 25_000,
});

async function main() {
  if (!config) {
    throw new Error('MYELIN_REACH_CONFIG (JSON) is not set');
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
      '--disable-features=WebRtcHideLocalIpsWithMdns',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  let page;
  try {
    summary.browser = browser.version();
    page = await openPage(browser, me, pageUrl);
    const joined = await page.evaluate((args) => window.call.join(args), {
      serviceUrl: config.serviceUrl,
      room: config.roomId,
      openidToken: config.openidToken,
      deviceId: config.deviceId,
      debug: !!process.env.MYELIN_CALL_DEBUG,
    });
    summary.identity = joined.identity;
    summary.url = joined.url;
    step('joined', joined);
    const state = () => page.evaluate(() => window.call.state());

    await until(`subscribing to ${config.other}'s audio and video`, async () => {
      const s = await state();
      return remoteTrack(s, config.other, 'audio')?.subscribed && remoteTrack(s, config.other, 'video')?.subscribed
        ? s
        : { done: false, s };
    });
    step(`subscribed to ${config.other}'s audio and video`);

    const counters = async () => {
      const list = await page.evaluate(() => window.call.stats());
      const of = (kind) => list.find((e) => e.identity === config.other && e.kind === kind) ?? {};
      return {
        audioBytes: of('audio').bytesReceived ?? 0,
        videoBytes: of('video').bytesReceived ?? 0,
        framesDecoded: of('video').framesDecoded ?? 0,
      };
    };
    const first = await until(`receiving ${config.other}'s media`, async () => {
      const c = await counters();
      return c.audioBytes > 0 && c.framesDecoded > 0 ? c : { done: false, c };
    });
    const later = await until('inbound counters rising', async () => {
      const c = await counters();
      return c.audioBytes > first.audioBytes && c.framesDecoded >= first.framesDecoded + 10
        ? c
        : { done: false, first, c };
    });
    summary.media = { first, later };
    step(`decodes ${config.other}'s frames`, later);

    summary.transports = await page.evaluate(() => window.call.transports());
    step('recorded the selected candidate pairs');

    // Done: tell the other, and stay until it is done too (or gone).
    const done = `done ${joined.identity}`;
    await page.evaluate((t) => window.call.sendData(t), done);
    await until(`${config.other} being done too`, async () => {
      const s = await state();
      return seen(s, 'data', { identity: config.other, text: `done ${config.other}` }) ||
        seen(s, 'participantDisconnected', { identity: config.other });
    });
    step('both done');
    await page.evaluate(() => window.call.leave());
    server.close();
  } catch (e) {
    // What the page saw, with its ICE candidates, to tell signalling from media problems.
    summary.diagnostics = page
      ? await page
          .evaluate(async () => ({
            state: window.call.state(),
            inbound: await window.call.stats(),
            transports: await window.call.transports(),
          }))
          .catch((err) => String(err))
      : null;
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
