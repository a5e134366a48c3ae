// Shared by the matrix-js-sdk scripts that drive Myelin's own features (room_kinds.mjs,
// ticks.mjs): the run's limits, progress and failure output, registration through UIA,
// started clients and requests to the `io.myelin` endpoints.

import { ClientEvent, createClient, MatrixError, SyncState } from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

/** The server's base URL: the script's one argument. */
export const base = process.argv[2];

let label = "js-sdk";

/** Names the run in its output (`LABEL: ok`, `LABEL: FAILED: …`) and starts its limit. */
export function begin(name) {
    label = name;
    if (!base) {
        console.error(`usage: node SCRIPT BASE_URL`);
        process.exit(2);
    }
    logger.setLevel(process.env.MYELIN_JS_DEBUG ? "debug" : "warn");
    overall = setTimeout(() => fail("the run did not finish within 90 s"), 90_000);
}

/** Stops the clients and prints `LABEL: ok`. */
export function finish() {
    for (const client of clients) client.stopClient();
    clearTimeout(overall);
    console.log(`${label}: ok`);
}

/** Runs `main`, exiting 0 when it resolves and failing with its error otherwise. */
export function run(main) {
    main().then(
        () => process.exit(0),
        (e) => fail(e?.stack ?? String(e)),
    );
}

let overall;

/** Longest wait for any one step; the whole run has its own limit below. */
export const STEP_MS = 20_000;

export const MYELIN_PREFIX = "/_matrix/client/unstable/io.myelin";

export const clients = [];

export function fail(message) {
    console.error(`${label}: FAILED: ${message}`);
    for (const client of clients) client.stopClient();
    process.exit(1);
}

export function step(message) {
    console.log(`- ${message}`);
}

export function check(condition, message) {
    if (!condition) throw new Error(message);
}

/** Polls `probe` until it returns a truthy value, or fails with `what` after `ms`. */
export async function waitFor(what, probe, ms = STEP_MS) {
    const deadline = Date.now() + ms;
    for (;;) {
        const value = await probe();
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
    }
}

/** Registers `name` through the SDK with user-interactive auth (m.login.dummy). */
export async function register(name) {
    const anonymous = createClient({ baseUrl: base });
    const password = `${name}-password`;
    let session;
    try {
        await anonymous.registerRequest({ username: name, password });
        throw new Error("registration without auth succeeded: expected a UIA 401");
    } catch (e) {
        if (!(e instanceof MatrixError) || e.httpStatus !== 401) throw e;
        session = e.data.session;
    }
    return anonymous.registerRequest({
        username: name,
        password,
        auth: { type: "m.login.dummy", session },
    });
}

/** A logged-in client, started and synced to PREPARED. */
export async function startClient(account) {
    const client = createClient({
        baseUrl: base,
        userId: account.user_id,
        deviceId: account.device_id,
        accessToken: account.access_token,
    });
    clients.push(client);
    const prepared = new Promise((resolve, reject) => {
        client.on(ClientEvent.Sync, (state, _prev, data) => {
            if (state === SyncState.Prepared) resolve();
            if (state === SyncState.Error) reject(new Error(`sync error: ${data?.error}`));
        });
    });
    await client.startClient({ initialSyncLimit: 20 });
    await Promise.race([
        prepared,
        new Promise((_, reject) =>
            setTimeout(() => reject(new Error("no PREPARED sync state")), STEP_MS).unref(),
        ),
    ]);
    return client;
}

/** A request to Myelin's `io.myelin` endpoints with the client's own session. */
export function myelin(client, method, path, body) {
    return client.http.authedRequest(method, path, undefined, body, { prefix: MYELIN_PREFIX });
}

