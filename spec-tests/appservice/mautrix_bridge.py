"""A bridge built on the mautrix framework (mautrix-python), driven by the Rust test
`spec-tests/tests/appservice_mautrix.rs` against Myelin.

It starts mautrix's AppService on a loopback port, makes sure its bot and a puppet are
registered, joins the puppet to the room, sends a message as the puppet, then waits for a
message from someone outside its namespace to arrive in a transaction. Each step prints
one JSON line on stdout; it exits 0 once the message arrived, 1 on a timeout.
"""

import argparse
import asyncio
import json
import sys

from mautrix.appservice import AppService
from mautrix.types import Event, EventType, RoomID, UserID


def emit(**fields):
    print(json.dumps(fields), flush=True)


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--homeserver", required=True)
    p.add_argument("--domain", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--id", default="mx")
    p.add_argument("--timeout", type=float, default=60)
    a = p.parse_args()

    az = AppService(
        server=a.homeserver,
        domain=a.domain,
        as_token=f"{a.id}_as",
        hs_token=f"{a.id}_hs",
        bot_localpart=f"{a.id}_bot",
        id=a.id,
    )
    received: asyncio.Future = asyncio.get_running_loop().create_future()

    @az.matrix_event_handler
    async def on_event(evt: Event) -> None:
        if evt.type != EventType.ROOM_MESSAGE or evt.sender.startswith(f"@{a.id}_"):
            return
        if not received.done():
            received.set_result(evt)

    await az.start(host="127.0.0.1", port=a.port)
    try:
        await az.intent.ensure_registered()
        puppet = az.intent.user(UserID(f"@{a.id}_puppet:{a.domain}"))
        await puppet.ensure_registered()
        room = RoomID(a.room)
        await puppet.ensure_joined(room)
        event_id = await puppet.send_text(room, "hello from mautrix")
        emit(sent=str(event_id), puppet=str(puppet.mxid))
        try:
            evt = await asyncio.wait_for(received, a.timeout)
        except asyncio.TimeoutError:
            emit(error="no message arrived in a transaction")
            return 1
        emit(
            received=str(evt.event_id),
            sender=str(evt.sender),
            room=str(evt.room_id),
            body=evt.content.body,
        )
        return 0
    finally:
        await az.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
