// A real client and Myelin's ticks: when bob's matrix-js-sdk client syncs alice's
// message, the server records an `io.myelin.delivered` receipt that alice's client reads
// through the SDK's own receipt API (`room.getReceiptsForEvent`), and the sender's
// `/ticks` lists bob as delivered, then as read once his client sends a read receipt. Run
// by spec-tests/tests/interop_js_ticks.rs as `node ticks.mjs BASE_URL`.
//
// Prints progress to stdout, `js-sdk ticks: ok` at the end; exits non-zero with the
// reason on any failure or when a step does not finish in time.

import { Method, MsgType } from "matrix-js-sdk";

import { begin, check, finish, myelin, register, run, startClient, step, waitFor } from "./common.mjs";

begin("js-sdk ticks");

const DELIVERED = "io.myelin.delivered";

async function main() {
    const suffix = Date.now().toString(36);
    const aliceAccount = await register(`alice-${suffix}`);
    const bobAccount = await register(`bob-${suffix}`);
    const aliceId = aliceAccount.user_id;
    const bobId = bobAccount.user_id;
    const alice = await startClient(aliceAccount);
    const bob = await startClient(bobAccount);
    step(`${aliceId} and ${bobId} synced to PREPARED`);

    const { room_id: roomId } = await alice.createRoom({ name: "Ticks" });
    await alice.invite(roomId, bobId);
    await waitFor("bob's invite", () => bob.getRoom(roomId)?.getMyMembership() === "invite");
    await bob.joinRoom(roomId);
    await waitFor("bob joined", () => bob.getRoom(roomId)?.getMyMembership() === "join");
    await waitFor("alice sees bob joined", () => alice.getRoom(roomId)?.getMember(bobId)?.membership === "join");
    step(`alice created ${roomId}, bob joined`);

    const { event_id: eventId } = await alice.sendMessage(roomId, { msgtype: MsgType.Text, body: "did you get this?" });
    // Bob's running client syncs the message: that is the delivery.
    await waitFor("bob's client to receive the message", () => bob.getRoom(roomId)?.findEventById(eventId));
    step("bob's client received alice's message");

    const aliceRoom = alice.getRoom(roomId);
    const receipt = await waitFor("alice's client to see bob's delivered receipt", () => {
        const event = aliceRoom.findEventById(eventId);
        return event && aliceRoom.getReceiptsForEvent(event).find((r) => r.type === DELIVERED && r.userId === bobId);
    });
    check(typeof receipt.data?.ts === "number", `delivered receipt data: ${JSON.stringify(receipt)}`);
    const ticksPath = `/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}/ticks`;
    let ticks = await myelin(alice, Method.Get, ticksPath);
    check(
        ticks.sent === true && JSON.stringify(ticks.delivered) === JSON.stringify([bobId]) && ticks.read.length === 0,
        `ticks after delivery: ${JSON.stringify(ticks)}`,
    );
    step("alice's client read bob's io.myelin.delivered receipt through getReceiptsForEvent; /ticks agrees");

    const bobEvent = bob.getRoom(roomId).findEventById(eventId);
    await bob.sendReadReceipt(bobEvent);
    await waitFor("alice's client to see bob's read receipt", () => {
        const event = aliceRoom.findEventById(eventId);
        return aliceRoom.getReceiptsForEvent(event).find((r) => r.type === "m.read" && r.userId === bobId);
    });
    ticks = await myelin(alice, Method.Get, ticksPath);
    check(JSON.stringify(ticks.read) === JSON.stringify([bobId]), `ticks after reading: ${JSON.stringify(ticks)}`);
    step("bob's read receipt turned the tick to read");

    finish();
}

run(main);
