// Interop with matrix-js-sdk (the SDK under Element Web) and its Rust crypto, against a
// running Myelin: two users register, start syncing clients with end-to-end encryption,
// open an encrypted DM, exchange one message each way and decrypt it, and read the default
// push rules. Run by spec-tests/tests/interop_js.rs as `node interop.mjs BASE_URL`.
//
// Prints progress to stdout, `js-sdk interop: ok` at the end; exits non-zero with the
// reason on any failure or when a step does not finish in time.

import {
    ClientEvent,
    createClient,
    EventType,
    MatrixError,
    MsgType,
    Preset,
    SyncState,
} from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const base = process.argv[2];
if (!base) {
    console.error("usage: node interop.mjs BASE_URL");
    process.exit(2);
}

// The SDK logs every request at debug level; keep its warnings (MYELIN_JS_DEBUG=1 for all).
logger.setLevel(process.env.MYELIN_JS_DEBUG ? "debug" : "warn");

/** Longest wait for any one step; the whole run has its own limit below. */
const STEP_MS = 20_000;
const overall = setTimeout(() => fail("the run did not finish within 90 s"), 90_000);

const clients = [];

function fail(message) {
    console.error(`js-sdk interop: FAILED: ${message}`);
    for (const client of clients) client.stopClient();
    process.exit(1);
}

function step(message) {
    console.log(`- ${message}`);
}

function check(condition, message) {
    if (!condition) throw new Error(message);
}

/** Polls `probe` until it returns a truthy value, or fails with `what` after `ms`. */
async function waitFor(what, probe, ms = STEP_MS) {
    const deadline = Date.now() + ms;
    for (;;) {
        const value = await probe();
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
    }
}

/** Registers `name` through the SDK with user-interactive auth (m.login.dummy). */
async function register(name) {
    const anonymous = createClient({ baseUrl: base });
    const password = `${name}-password`;
    let session;
    try {
        await anonymous.registerRequest({ username: name, password });
        throw new Error("registration without auth succeeded: expected a UIA 401");
    } catch (e) {
        if (!(e instanceof MatrixError) || e.httpStatus !== 401) throw e;
        const flows = e.data.flows ?? [];
        check(
            flows.some((flow) => flow.stages.length === 1 && flow.stages[0] === "m.login.dummy"),
            `no m.login.dummy flow offered: ${JSON.stringify(e.data)}`,
        );
        session = e.data.session;
        check(session, `no UIA session in ${JSON.stringify(e.data)}`);
    }
    const done = await anonymous.registerRequest({
        username: name,
        password,
        initial_device_display_name: `${name}'s js-sdk`,
        auth: { type: "m.login.dummy", session },
    });
    check(done.access_token && done.device_id, `register response: ${JSON.stringify(done)}`);
    return done;
}

/** A logged-in client with Rust crypto, started and synced to PREPARED. */
async function startClient(account) {
    const client = createClient({
        baseUrl: base,
        userId: account.user_id,
        deviceId: account.device_id,
        accessToken: account.access_token,
    });
    clients.push(client);
    await client.initRustCrypto({ useIndexedDB: false });
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

/**
 * Waits until `client` has event `eventId` in `roomId`, decrypted, and returns it. A failed
 * decryption is retried by the SDK when the room key arrives, so only the final state counts.
 */
async function decryptedEvent(client, roomId, eventId) {
    let last;
    try {
        return await waitFor(`${client.getUserId()} to decrypt ${eventId}`, () => {
            last = client.getRoom(roomId)?.findEventById(eventId);
            if (!last || last.isBeingDecrypted() || last.isDecryptionFailure()) return null;
            return last;
        });
    } catch (e) {
        const state = last
            ? `type ${last.getType()}, failure ${last.decryptionFailureReason ?? "none"}`
            : "not received";
        throw new Error(`${e.message} (${state})`);
    }
}

/** Asserts `event` came over the wire encrypted and decrypted to a text message `body`. */
function checkDecrypted(event, body, sender) {
    check(event.isEncrypted(), `event ${event.getId()} was not encrypted on the wire`);
    check(
        event.getWireType() === EventType.RoomMessageEncrypted,
        `wire type ${event.getWireType()}`,
    );
    check(!event.isDecryptionFailure(), `decryption failure: ${event.decryptionFailureReason}`);
    check(event.getType() === EventType.RoomMessage, `decrypted type ${event.getType()}`);
    check(event.getContent().body === body, `decrypted body ${JSON.stringify(event.getContent())}`);
    check(event.getSender() === sender, `sender ${event.getSender()}`);
}

/** The raw event as the server stores it, fetched without the SDK. */
async function rawEvent(account, roomId, eventId) {
    const url = `${base}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`;
    const resp = await fetch(url, { headers: { authorization: `Bearer ${account.access_token}` } });
    const text = await resp.text();
    check(resp.ok, `GET ${url}: ${resp.status} ${text}`);
    return JSON.parse(text);
}

/** The default push rules of the spec that Element relies on. */
function checkPushRules(rules, who) {
    check(rules?.global, `${who}: no global push ruleset: ${JSON.stringify(rules)}`);
    const ids = (kind) => (rules.global[kind] ?? []).map((rule) => rule.rule_id);
    const expected = {
        override: [".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event"],
        underride: [
            ".m.rule.call",
            ".m.rule.encrypted_room_one_to_one",
            ".m.rule.room_one_to_one",
            ".m.rule.message",
            ".m.rule.encrypted",
        ],
    };
    for (const [kind, wanted] of Object.entries(expected)) {
        for (const id of wanted) {
            check(ids(kind).includes(id), `${who}: ${kind} rules lack ${id}: ${ids(kind).join(", ")}`);
        }
    }
    const master = rules.global.override.find((rule) => rule.rule_id === ".m.rule.master");
    check(master.default === true && master.enabled === false, `${who}: master rule ${JSON.stringify(master)}`);
}

/** What Element Web asks beyond the SDK's own startup, with the answers it relies on. */
async function elementStartupCalls(client, account) {
    // No OAuth 2.0 (next-gen auth): Element falls back to the legacy login API only on 404
    // M_UNRECOGNIZED.
    try {
        const metadata = await client.getAuthMetadata();
        throw new Error(`auth_metadata answered ${JSON.stringify(metadata)}: expected 404 M_UNRECOGNIZED`);
    } catch (e) {
        check(
            e instanceof MatrixError && e.httpStatus === 404 && e.errcode === "M_UNRECOGNIZED",
            `auth_metadata: expected 404 M_UNRECOGNIZED, got ${e}`,
        );
    }
    const flows = await client.loginFlows();
    check(
        flows.flows.some((flow) => flow.type === "m.login.password"),
        `login flows without m.login.password: ${JSON.stringify(flows)}`,
    );
    const whoami = await client.whoami();
    check(
        whoami.user_id === account.user_id && whoami.device_id === account.device_id,
        `whoami: ${JSON.stringify(whoami)}`,
    );
    const profile = await client.getProfileInfo(account.user_id);
    check(typeof profile.displayname === "string", `profile: ${JSON.stringify(profile)}`);
    const threepids = await client.getThreePids();
    check(Array.isArray(threepids.threepids), `3pids: ${JSON.stringify(threepids)}`);
    const protocols = await client.getThirdpartyProtocols();
    check(protocols && !Array.isArray(protocols), `thirdparty protocols: ${JSON.stringify(protocols)}`);
    const { devices } = await client.getDevices();
    check(
        devices.some((device) => device.device_id === account.device_id),
        `own device missing from /devices: ${JSON.stringify(devices)}`,
    );
    check(
        (await client.getVersions()).versions.includes("v1.11"),
        "server does not advertise v1.11",
    );
}

async function main() {
    const suffix = Date.now().toString(36);
    const aliceAccount = await register(`alice-${suffix}`);
    const bobAccount = await register(`bob-${suffix}`);
    const aliceId = aliceAccount.user_id;
    const bobId = bobAccount.user_id;
    step(`registered ${aliceId} and ${bobId}`);

    const alice = await startClient(aliceAccount);
    const bob = await startClient(bobAccount);
    step("both clients reached PREPARED with Rust crypto");

    await elementStartupCalls(alice, aliceAccount);
    step("Element's other startup requests answered");

    checkPushRules(alice.pushRules, "alice (after PREPARED)");
    checkPushRules(await bob.getPushRules(), "bob (GET /pushrules/)");
    step("default push rules present");

    // Each side's device keys reached the server and the other side can see them.
    for (const [client, other, otherDevice] of [
        [alice, bobId, bobAccount.device_id],
        [bob, aliceId, aliceAccount.device_id],
    ]) {
        await waitFor(`${client.getUserId()} to see ${other}'s device keys`, async () => {
            const devices = await client.getCrypto().getUserDeviceInfo([other], true);
            return devices.get(other)?.has(otherDevice);
        });
    }
    step("device keys uploaded and queried both ways");

    // An encrypted DM, as Element creates it.
    const { room_id: roomId } = await alice.createRoom({
        preset: Preset.TrustedPrivateChat,
        is_direct: true,
        invite: [bobId],
        initial_state: [
            {
                type: EventType.RoomEncryption,
                state_key: "",
                content: { algorithm: "m.megolm.v1.aes-sha2" },
            },
        ],
    });
    await alice.setAccountData(EventType.Direct, { [bobId]: [roomId] });
    step(`alice created encrypted DM ${roomId}`);

    const invited = await waitFor("bob's invite", () => {
        const room = bob.getRoom(roomId);
        return room?.getMyMembership() === "invite" ? room : null;
    });
    const invite = invited.getMember(bobId)?.events.member;
    check(invite?.getContent().is_direct === true, `invite is not direct: ${JSON.stringify(invite?.getContent())}`);
    await bob.joinRoom(roomId);
    await waitFor("alice to see bob joined", () => alice.getRoom(roomId)?.getMember(bobId)?.membership === "join");
    await waitFor("bob's room state", () => bob.getRoom(roomId)?.hasEncryptionStateEvent());
    // The Rust crypto learns the room's encryption from the state event asynchronously,
    // after the room state shows it: wait for it (bounded) instead of asking once.
    await waitFor("alice's crypto to see the room encrypted", () =>
        alice.getCrypto().isEncryptionEnabledInRoom(roomId),
    );
    await waitFor("bob's crypto to see the room encrypted", () =>
        bob.getCrypto().isEncryptionEnabledInRoom(roomId),
    );
    step("bob joined the encrypted DM");

    const hello = `hello bob, secretly (${suffix})`;
    const { event_id: helloId } = await alice.sendMessage(roomId, { msgtype: MsgType.Text, body: hello });
    const helloRaw = await rawEvent(aliceAccount, roomId, helloId);
    check(
        helloRaw.type === "m.room.encrypted" && helloRaw.content.algorithm === "m.megolm.v1.aes-sha2",
        `server holds alice's message unencrypted: ${JSON.stringify(helloRaw)}`,
    );
    check(!JSON.stringify(helloRaw).includes(hello), "the plaintext reached the server");
    const helloAtBob = await decryptedEvent(bob, roomId, helloId);
    checkDecrypted(helloAtBob, hello, aliceId);
    step("bob decrypted alice's message");

    const actions = bob.getPushActionsForEvent(helloAtBob, true);
    check(actions?.notify === true, `alice's DM message does not notify bob: ${JSON.stringify(actions)}`);
    step("bob's push rules notify for the decrypted DM message");

    const reply = `hello alice, secretly too (${suffix})`;
    const { event_id: replyId } = await bob.sendMessage(roomId, { msgtype: MsgType.Text, body: reply });
    const replyRaw = await rawEvent(bobAccount, roomId, replyId);
    check(replyRaw.type === "m.room.encrypted", `server holds bob's reply unencrypted: ${JSON.stringify(replyRaw)}`);
    checkDecrypted(await decryptedEvent(alice, roomId, replyId), reply, bobId);
    step("alice decrypted bob's reply");

    for (const client of clients) client.stopClient();
    clearTimeout(overall);
    console.log("js-sdk interop: ok");
}

main().then(
    () => process.exit(0),
    (e) => fail(e?.stack ?? String(e)),
);
