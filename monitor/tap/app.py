"""Wiring for ``framewatch tap``: settings -> metrics, publisher, proxy app -> one uvicorn server, two ports.

One server and one event loop listen on both the proxy port and the metrics port; the app tells them apart
by the local port of each connection. uvicorn's own access log stays off: it would log paths and query
strings, which can carry keys. Its proxy-headers middleware is off too: the tap never looks at the client's
address, and the middleware would run on every request.
"""

from __future__ import annotations

import signal
import socket

import uvicorn
from prometheus_client import disable_created_metrics

from monitor.settings import Settings
from monitor.tap.metrics import TapMetrics
from monitor.tap.proxy import TapApp
from monitor.tap.publisher import EventPublisher


def build(settings: Settings) -> tuple[TapApp, uvicorn.Server]:
    disable_created_metrics()
    metrics = TapMetrics()
    app = TapApp(settings, metrics, EventPublisher(settings, metrics))
    config = uvicorn.Config(app, host=settings.tap_host, port=settings.tap_port, log_level="warning", log_config=None,
                            access_log=False, server_header=False, date_header=False, lifespan="on",
                            proxy_headers=False, timeout_graceful_shutdown=30, timeout_keep_alive=75)
    return app, uvicorn.Server(config)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, made here so uvicorn's port is bound before the publisher starts.

    The protocol is given explicitly: asyncio sets TCP_NODELAY only on sockets whose ``proto`` is
    IPPROTO_TCP, and accepted sockets inherit ``proto`` 0 from a listener made without it - then Nagle's
    algorithm meets the client's delayed ACK and every response waits ~40 ms (bench/bench_tap.py).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT (uvicorn drains open requests, then the publisher flushes)."""
    _app, server = build(settings)
    sockets = [listen(settings.tap_host, settings.tap_port), listen(settings.tap_host, settings.tap_metrics_port)]
    # uvicorn handles SIGTERM/SIGINT while it runs, then re-raises them to the handlers it found: these no-ops,
    # so that a clean drain ends with exit code 0 rather than death by the re-raised signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=sockets)
    return 0
