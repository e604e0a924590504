"""The tap's listening socket: accepted connections get TCP_NODELAY, or each answer waits for a delayed ACK.

A listener made without an explicit protocol hands asyncio accepted sockets with ``proto`` 0, on which asyncio
does not set TCP_NODELAY; Nagle's algorithm then held every response ~40 ms (measured in bench/bench_tap.py).
"""

from __future__ import annotations

import asyncio
import socket

from monitor.tap.app import listen


def test_accepted_connections_have_nodelay() -> None:
    async def check() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listener = listen("127.0.0.1", 0)
        server = await asyncio.start_server(on_connect, sock=listener)
        port = listener.getsockname()[1]
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            value = await asyncio.wait_for(seen, 5)
            writer.close()
            await writer.wait_closed()
        return value

    assert asyncio.run(check()) != 0
