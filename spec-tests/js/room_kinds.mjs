// A real client and Myelin's room kinds: matrix-js-sdk (the SDK under Element Web) creates
// a virtual room, reads its kind from `m.room.create` and the roles from the server's
// power levels and `/roles`, sees text mute grey out a member's composer (what Element's
// `room.maySendMessage()` says), promotes a member to moderator and is refused raising
// anyone to 100. Run by spec-tests/tests/interop_js_kinds.rs as
// `node room_kinds.mjs BASE_URL`.
//
// Prints progress to stdout, `js-sdk room kinds: ok` at the end; exits non-zero with the
// reason on any failure or when a step does not finish in time.

import { MatrixError, Method, MsgType } from "matrix-js-sdk";

import { begin, check, finish, myelin, register, run, startClient, step, waitFor } from "./common.mjs";

begin("js-sdk room kinds");

const VIRTUAL_ROOM = "io.myelin.virtual_room";

/** Runs `action`, which must be refused with 403 M_FORBIDDEN saying `words`. */
async function refused(what, action, words) {
    try {
        await action();
    } catch (e) {
        check(
            e instanceof MatrixError && e.httpStatus === 403 && e.errcode === "M_FORBIDDEN",
            `${what}: expected 403 M_FORBIDDEN, got ${e}`,
        );
        check(e.message.includes(words), `${what}: the refusal "${e.message}" does not say "${words}"`);
        return;
    }
    throw new Error(`${what} was not refused`);
}

async function main() {
    const suffix = Date.now().toString(36);
    const aliceAccount = await register(`alice-${suffix}`);
    const bobAccount = await register(`bob-${suffix}`);
    const aliceId = aliceAccount.user_id;
    const bobId = bobAccount.user_id;
    const alice = await startClient(aliceAccount);
    const bob = await startClient(bobAccount);
    step(`${aliceId} and ${bobId} synced to PREPARED`);

    // Whatever the override says, the server's levels apply.
    const { room_id: roomId } = await alice.createRoom({
        name: "Town hall",
        creation_content: { type: VIRTUAL_ROOM },
        power_level_content_override: { users: { [aliceId]: 100, [bobId]: 100 }, invite: 0 },
    });
    await alice.invite(roomId, bobId);
    await waitFor("bob's invite", () => bob.getRoom(roomId)?.getMyMembership() === "invite");
    await bob.joinRoom(roomId);
    const room = await waitFor("bob's joined room with its state", () => {
        const r = bob.getRoom(roomId);
        return r?.getMyMembership() === "join" && r.currentState.getStateEvents("m.room.power_levels", "")
            ? r
            : null;
    });
    step(`alice created virtual room ${roomId}, bob joined`);

    check(room.getType() === VIRTUAL_ROOM, `room type as the SDK reads it: ${room.getType()}`);
    check(room.name === "Town hall", `room name: ${room.name}`);
    const levels = room.currentState.getStateEvents("m.room.power_levels", "").getContent();
    check(
        JSON.stringify(levels.users) === JSON.stringify({ [aliceId]: 100 }),
        `power levels users: ${JSON.stringify(levels.users)}`,
    );
    check(levels.invite === 50, `invite level: ${levels.invite}`);
    check(room.getMember(aliceId)?.powerLevel === 100, "alice is not at 100 for the SDK");
    check(room.getMember(bobId)?.powerLevel === 0, "bob is not at 0 for the SDK");
    let roles = await myelin(bob, Method.Get, `/rooms/${encodeURIComponent(roomId)}/roles`);
    check(
        roles.kind === "virtual_room" && roles.owner === aliceId && roles.moderators.length === 0 && roles.members === 2,
        `roles: ${JSON.stringify(roles)}`,
    );
    step("bob's client reads the kind (m.room.create type), the owner and the roles");

    // Text mute: Element greys out the composer when room.maySendMessage() is false.
    check(room.maySendMessage(), "bob may not write before text mute");
    await myelin(alice, Method.Put, `/rooms/${encodeURIComponent(roomId)}/text_mute`, { muted: true });
    await waitFor("bob's client to see text mute", () => !room.maySendMessage());
    await refused(
        "bob's message while muted",
        () => bob.sendMessage(roomId, { msgtype: MsgType.Text, body: "may I?" }),
        "muted messages",
    );
    await myelin(alice, Method.Put, `/rooms/${encodeURIComponent(roomId)}/text_mute`, { muted: false });
    await waitFor("bob's client to see text mute lifted", () => room.maySendMessage());
    await bob.sendMessage(roomId, { msgtype: MsgType.Text, body: "thanks" });
    step("text mute greyed out bob's composer, refused his message, and unmute restored it");

    // The owner promotes bob to moderator with the SDK's own call; nobody reaches 100.
    await alice.setPowerLevel(roomId, bobId, 50);
    await waitFor("bob's client to see himself at 50", () => room.getMember(bobId)?.powerLevel === 50);
    await refused(
        "bob raising himself to 100",
        () => bob.setPowerLevel(roomId, bobId, 100),
        "Nobody can be raised to 100",
    );
    await refused(
        "bob lowering the owner",
        () => bob.setPowerLevel(roomId, aliceId, 50),
        "owner's power level cannot be changed",
    );
    roles = await myelin(bob, Method.Get, `/rooms/${encodeURIComponent(roomId)}/roles`);
    check(
        JSON.stringify(roles.moderators) === JSON.stringify([bobId]),
        `roles after the promotion: ${JSON.stringify(roles)}`,
    );
    const unread = await myelin(bob, Method.Get, "/unread");
    check(typeof unread.virtual_rooms?.notifications === "number", `unread: ${JSON.stringify(unread)}`);
    step("alice promoted bob to moderator; raising to 100 and touching the owner were refused");

    finish();
}

run(main);
