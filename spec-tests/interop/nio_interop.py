"""Interop test with matrix-nio, a real Matrix client library.

Usage: nio_interop.py BASE_URL
Two users register, alice creates a room and invites bob, bob joins, both send, both
sync, and bob paginates history backwards. Exits non-zero with a message on any failure.
"""

import asyncio
import sys

from nio import (
    AsyncClient,
    JoinResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncResponse,
)


def check(cond, what):
    if not cond:
        raise SystemExit(f"nio interop failed: {what}")


async def register(base, name):
    client = AsyncClient(base, name)
    resp = await client.register(name, f"{name}-password", device_name=f"{name}-nio")
    check(isinstance(resp, RegisterResponse), f"register {name}: {resp}")
    check(client.access_token, f"no token for {name}")
    return client


async def main(base):
    alice = await register(base, "alice")
    bob = await register(base, "bob")
    try:
        # a fresh login works too
        bob_login = AsyncClient(base, "@bob:localhost")
        resp = await bob_login.login("bob-password")
        check(getattr(resp, "access_token", None), f"login: {resp}")
        await bob_login.close()

        created = await alice.room_create(name="Interop", topic="nio")
        check(isinstance(created, RoomCreateResponse), f"room_create: {created}")
        room_id = created.room_id

        invited = await alice.room_invite(room_id, bob.user_id)
        check(isinstance(invited, RoomInviteResponse), f"invite: {invited}")

        sync = await bob.sync(timeout=5000, full_state=True)
        check(isinstance(sync, SyncResponse), f"bob sync: {sync}")
        check(room_id in sync.rooms.invite, f"bob sees no invite: {sync.rooms.invite.keys()}")

        joined = await bob.join(room_id)
        check(isinstance(joined, JoinResponse), f"join: {joined}")

        for i in range(30):
            sent = await alice.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": f"hello {i}"}
            )
            check(isinstance(sent, RoomSendResponse), f"send: {sent}")
        sent = await bob.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "hi alice"}
        )
        check(isinstance(sent, RoomSendResponse), f"bob send: {sent}")

        # alice syncs and sees bob's join and message; nio builds the room model from it
        sync = await alice.sync(timeout=5000, full_state=True)
        check(isinstance(sync, SyncResponse), f"alice sync: {sync}")
        room = alice.rooms.get(room_id)
        check(room is not None, "alice has no room model")
        check(room.name == "Interop", f"room name {room.name!r}")
        check(bob.user_id in room.users, f"bob not a member in alice's model: {list(room.users)}")
        bodies = [getattr(e, "body", None) for e in sync.rooms.join[room_id].timeline.events]
        check("hi alice" in bodies, f"alice timeline: {bodies}")

        # bob's incremental sync has the room and messages, with a limited timeline
        sync = await bob.sync(timeout=5000, sync_filter={"room": {"timeline": {"limit": 10}}})
        check(isinstance(sync, SyncResponse), f"bob sync 2: {sync}")
        check(room_id in sync.rooms.join, "bob's sync lacks the room")
        timeline = sync.rooms.join[room_id].timeline
        check(timeline.limited, "timeline should be limited")
        bodies = [getattr(e, "body", None) for e in timeline.events]
        check(bodies[-1] == "hi alice", f"bob timeline tail: {bodies}")

        # paginate backwards from prev_batch until the room's start
        token = timeline.prev_batch
        seen = []
        for _ in range(20):
            page = await bob.room_messages(room_id, start=token, limit=7)
            check(isinstance(page, RoomMessagesResponse), f"messages: {page}")
            seen.extend(getattr(e, "body", None) for e in page.chunk)
            if not page.end or not page.chunk:
                break
            token = page.end
        seen = [b for b in seen if b]
        expected = [f"hello {i}" for i in range(20, -1, -1)]
        check(seen[: len(expected)] == expected, f"pagination order: {seen}")
        print("nio interop: ok")
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
