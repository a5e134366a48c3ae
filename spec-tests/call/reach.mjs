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

import { readFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const HARD_TIMEOUT_MS = 75_000;
const STEP_TIMEOUT_MS = 25_000;
const here = path.dirname(fileURLToPath(import.meta.url));
const started = Date.now();
const summary = { ok: false, steps: [] };
const config = JSON.parse(process.env.MYELIN_REACH_CONFIG ?? 'null');
const me = config?.name ?? 'page';

function progress(msg) {
  process.stderr.write(`[reach ${me} ${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}\n`);
}

function finish(code, error) {
  if (error) {
    summary.error = error;
  }
  summary.ok = code === 0;
  summary.durationMs = Date.now() - started;
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  process.exit(code);
}

const hardTimeout = setTimeout(
  () => finish(2, `hard timeout: ${me} did not finish within ${HARD_TIMEOUT_MS / 1000} s`),
  HARD_TIMEOUT_MS,
);

function step(name, detail = {}) {
  summary.steps.push({ name, atMs: Date.now() - started, ...detail });
  progress(name);
}

// Polls `probe` until it returns a truthy value; fails with `what` and the last value seen.
async function until(what, probe, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (last?.done ?? last) {
      return last;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}; last seen: ${JSON.stringify(last)}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

// Serves the page, its script and livekit-client's UMD bundle on this namespace's loopback.
async function servePage() {
  const files = {
    '/': ['page.html', 'text/html'],
    '/page.js': ['page.js', 'text/javascript'],
    '/livekit-client.umd.js': ['node_modules/livekit-client/dist/livekit-client.umd.js', 'text/javascript'],
  };
  const server = http.createServer(async (req, res) => {
    const file = files[new URL(req.url, 'http://x').pathname];
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(path.join(here, file[0]));
      res.writeHead(200, { 'Content-Type': file[1], 'Cache-Control': 'no-store' }).end(body);
    } catch (e) {
      res.writeHead(500).end(String(e));
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${server.address().port}/` };
}

const remoteOf = (state, identity) => state.remote.find((p) => p.identity === identity);
const remoteTrack = (state, identity, kind) => remoteOf(state, identity)?.tracks.find((t) => t.kind === kind);
const seen = (state, event, match) =>
  state.events.some((e) => e.event === event && Object.entries(match).every(([k, v]) => e[k] === v));

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
    const context = await browser.newContext();
    page = await context.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning' || process.env.MYELIN_CALL_DEBUG) {
        process.stderr.write(`[${me} ${m.type()}] ${m.text()}\n`);
      }
    });
    page.on('pageerror', (e) => process.stderr.write(`[${me} pageerror] ${e}\n`));
    await page.goto(pageUrl);
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
