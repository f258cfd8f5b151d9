"""A CSMS that answers every call at once with a minimal valid answer, in its own process.

The replay benchmark needs a peer whose cost does not depend on the message (the dev CSMS
validates and converts every payload, more for MeterValues than for Heartbeat), so that the
Heartbeat round trip is a fair bound for any message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
from datetime import UTC, datetime

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

_ids = itertools.count(1)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _answer(action: str, version: str | None) -> dict:
    if action == "BootNotification":
        return {"status": "Accepted", "currentTime": _now(), "interval": 300}
    if action == "Heartbeat":
        return {"currentTime": _now()}
    if action == "StartTransaction":
        return {"transactionId": next(_ids), "idTagInfo": {"status": "Accepted"}}
    if action == "Authorize":
        key = "idTokenInfo" if version == "ocpp2.0.1" else "idTagInfo"
        return {key: {"status": "Accepted"}}
    return {}


async def _handler(connection) -> None:
    version = connection.subprotocol
    with contextlib.suppress(ConnectionClosed):
        async for text in connection:
            frame = json.loads(text)
            if frame[0] == 2:
                await connection.send(json.dumps([3, frame[1], _answer(frame[2], version)]))


async def main() -> None:
    # The charger offers one version in these benchmarks: the server takes it.
    async with serve(_handler, "127.0.0.1", 0,
                     subprotocols=["ocpp1.6", "ocpp2.0.1"]) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main())
