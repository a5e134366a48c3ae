// What every browser test driver here shares: the summary printed as one JSON line when
// the driver ends, progress on stderr, named steps, a hard timeout, polling with a
// deadline, the static server of the livekit-client page, opening a logged page, and
// readers of the call state that page.js reports.

import { readFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

/**
 * A driver's run: `tag` prefixes its progress lines, `what` names it in the hard-timeout
 * error, `summary` holds extra fields of the summary.
 */
export function run({ tag, what, hardTimeoutMs, stepTimeoutMs, summary: extra = {} }) {
  const started = Date.now();
  const summary = { ok: false, steps: [], ...extra };

  function progress(msg) {
    process.stderr.write(`[${tag} ${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}\n`);
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
    () => finish(2, `hard timeout: ${what} did not finish within ${hardTimeoutMs / 1000} s`),
    hardTimeoutMs,
  );

  function step(name, detail = {}) {
    summary.steps.push({ name, atMs: Date.now() - started, ...detail });
    progress(name);
  }

  // Polls `probe` until it returns a truthy value; fails with `what` and the last value seen.
  async function until(what, probe, timeoutMs = stepTimeoutMs) {
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

  return { summary, progress, finish, hardTimeout, step, until };
}

/** Serves page.html, page.js and livekit-client's UMD bundle on 127.0.0.1. */
export async function servePage() {
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

/**
 * Opens `url` in a new context of `browser`, its errors and warnings (everything with
 * MYELIN_CALL_DEBUG) on stderr under `name`; fails unless the page answers 200.
 */
export async function openPage(browser, name, url, contextOptions = {}) {
  const context = await browser.newContext(contextOptions);
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning' || process.env.MYELIN_CALL_DEBUG) {
      process.stderr.write(`[${name} ${m.type()}] ${m.text()}\n`);
    }
  });
  page.on('pageerror', (e) => process.stderr.write(`[${name} pageerror] ${e}\n`));
  const response = await page.goto(url);
  if (response.status() !== 200) {
    throw new Error(`${name}: ${url} answered ${response.status()}`);
  }
  return page;
}

// Readers of the state page.js reports (`window.call.state()`).
export const remoteOf = (state, identity) => state.remote.find((p) => p.identity === identity);
export const remoteTrack = (state, identity, kind) => remoteOf(state, identity)?.tracks.find((t) => t.kind === kind);
export const localTrack = (state, kind) => state.local.find((t) => t.kind === kind);
export const seen = (state, event, match) =>
  state.events.some((e) => e.event === event && Object.entries(match).every(([k, v]) => e[k] === v));
