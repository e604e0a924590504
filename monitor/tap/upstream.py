"""A minimal HTTP/1.1 client for one upstream: keep-alive connections on asyncio streams, framing by h11.

Why not httpx: its connection pool scans every pooled connection (a readability syscall each) on every
request, which made the tap cost ~2.5 ms of CPU per request at 50 in flight, five times what uvicorn
spends serving the same request; one host behind the tap needs only a stack of idle connections.
Framing (content-length, chunked, keep-alive, 1xx) is h11's, the same parser uvicorn serves with.

A request on a kept-alive connection that the upstream had already closed (its keep-alive timeout) fails
before any response byte: it is retried once on a fresh connection, as browsers and httpx do, which is
safe because the upstream never read it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11


class UpstreamError(Exception):
    """The upstream could not be reached or broke the HTTP exchange."""


class UpstreamTimeout(UpstreamError):
    """The upstream sent nothing for longer than the read timeout (or did not accept the connection)."""


class _Conn:
    __slots__ = ("reader", "writer", "h11")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=256 * 1024)

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof() and self.h11.our_state is h11.IDLE

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()

    async def read(self, timeout: float, nothing: str) -> bytes:
        """Up to 64 KiB from the upstream; :class:`UpstreamTimeout` (``upstream sent <nothing> ...``) when none
        arrives within ``timeout``. OSError passes through: what a broken read means depends on how far the
        exchange got (before any response byte the request may be retried)."""
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(65536)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"upstream sent {nothing} within the read timeout") from exc

    def feed(self, data: bytes) -> None:
        """Hand received bytes to h11 (``b""`` = EOF); a protocol violation by the upstream is an UpstreamError."""
        try:
            self.h11.receive_data(data)
        except h11.RemoteProtocolError as exc:
            raise UpstreamError(str(exc)) from exc


@dataclass
class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    _pool: UpstreamPool
    _conn: _Conn | None
    _read_timeout: float

    async def iter_body(self) -> AsyncIterator[bytes]:
        """The body as it arrives (transfer coding undone, content coding untouched).

        Everything one read from the socket delivered is yielded as one piece: under load several of the
        upstream's chunks arrive together, and relaying them as one write costs the tap one pass through
        the server instead of one per chunk, with no byte held back for later."""
        conn = self._conn
        assert conn is not None, "body already consumed"
        ready: list[bytes] = []  # what one read delivered: passed on as one piece, never waited for
        while True:
            event = conn.h11.next_event()
            if isinstance(event, h11.Data):
                if event.data:
                    ready.append(bytes(event.data))
                continue
            if ready:
                yield ready[0] if len(ready) == 1 else b"".join(ready)
                ready = []
            if event is h11.NEED_DATA:
                try:
                    data = await conn.read(self._read_timeout, "nothing")
                except OSError as exc:
                    raise UpstreamError(f"reading the body: {type(exc).__name__}") from exc
                conn.feed(data)  # b"" = EOF: h11 then errors unless the body was complete
            elif isinstance(event, h11.EndOfMessage):
                self._conn = None
                self._pool.release(conn)
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise UpstreamError("upstream closed the connection mid-body")

    async def aclose(self) -> None:
        """Give the connection back if the body was read to its end, else close it (stops the upstream)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class UpstreamPool:
    def __init__(self, base_url: str, *, max_idle: int, connect_timeout: float, read_timeout: float) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/").encode()
        default_port = self.port == (443 if url.scheme == "https" else 80)
        self.host_header = (url.hostname if default_port else f"{url.hostname}:{self.port}").encode()
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[_Conn] = []

    async def request(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes | AsyncIterator[bytes]) -> UpstreamResponse:
        """Send the request and wait for the response head; the body is read from the response."""
        target = self.prefix + target
        headers = [(b"host", self.host_header), *headers]
        if not isinstance(body, bytes) and not any(k.lower() in (b"content-length", b"transfer-encoding")
                                                   for k, _ in headers):
            headers.append((b"transfer-encoding", b"chunked"))
        elif isinstance(body, bytes) and not any(k.lower() == b"content-length" for k, _ in headers) and (
                body or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS")):
            headers.append((b"content-length", str(len(body)).encode()))
        for attempt in (0, 1):
            conn, reused = await self._acquire()
            try:
                return await self._exchange(conn, method, target, headers, body)
            except _StaleConnection:
                conn.close()
                if not reused or attempt == 1 or not isinstance(body, bytes):
                    raise UpstreamError("upstream closed the connection before answering") from None
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    async def _exchange(self, conn: _Conn, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                        body: bytes | AsyncIterator[bytes]) -> UpstreamResponse:
        h = conn.h11
        try:
            data = h.send(h11.Request(method=method, target=target, headers=headers))
            if isinstance(body, bytes):
                data += (h.send(h11.Data(data=body)) if body else b"") + h.send(h11.EndOfMessage())
                conn.writer.write(data)
            else:
                conn.writer.write(data)
                async for chunk in body:
                    if chunk:
                        conn.writer.write(h.send(h11.Data(data=chunk)))
                        await conn.writer.drain()
                conn.writer.write(h.send(h11.EndOfMessage()))
            await conn.writer.drain()
        except h11.LocalProtocolError as exc:
            raise UpstreamError(f"cannot forward this request: {exc}") from exc
        except OSError as exc:
            raise _StaleConnection from exc
        got_bytes = False
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await conn.read(self.read_timeout, "no response head")
                except OSError as exc:
                    if not got_bytes:
                        raise _StaleConnection from exc
                    raise UpstreamError(type(exc).__name__) from exc
                if not data and not got_bytes:
                    raise _StaleConnection
                got_bytes = True
                conn.feed(data)
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                return UpstreamResponse(event.status_code, list(event.headers.raw_items()), self, conn,
                                        self.read_timeout)
            if isinstance(event, h11.ConnectionClosed):
                raise _StaleConnection if not got_bytes else UpstreamError("upstream closed the connection")

    async def _acquire(self) -> tuple[_Conn, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn, True
            conn.close()
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=1 << 20)
        except TimeoutError as exc:
            raise UpstreamTimeout("connecting to the upstream timed out") from exc
        except OSError as exc:
            raise UpstreamError(f"cannot connect to the upstream: {type(exc).__name__}") from exc
        return _Conn(reader, writer), False

    def release(self, conn: _Conn) -> None:
        h = conn.h11
        if h.our_state is h11.DONE and h.their_state is h11.DONE and len(self._idle) < self.max_idle:
            h.start_next_cycle()
            self._idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()


class _StaleConnection(Exception):
    """The connection failed before any response byte: the upstream never saw the request."""
