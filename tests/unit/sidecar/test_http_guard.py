"""The HTTP input guard (monitor.sidecar.http.BoundedInput): who is refused, with which code, before reading what.

The guard is driven as an ASGI server drives it: the test plays the server (``receive`` hands out body chunks and
counts how many were asked for, ``send`` collects the answer), so "refused before a byte of the body was read" is
observed directly. The application behind it is the sidecar's real FastAPI app.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from monitor.sidecar.consumer import ConsumerState
from monitor.sidecar.http import UI_SECURITY_HEADERS, BoundedInput, admin_refusal, create_app
from monitor.sidecar.metrics import Metrics
from monitor.sidecar.windows import SlidingCounts

TOKEN = "s3cret-token"
LIMIT = 1000


def inner_app() -> FastAPI:
    """Routes shaped like the real admin and read endpoints; each reads its whole body."""
    app = FastAPI()

    @app.post("/v1/clusters")
    async def add(request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    @app.post("/v1/status")
    async def status(request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    @app.get("/ui")
    def ui() -> dict[str, str]:
        return {"ok": "yes"}

    return app


def drive(guard: Any, method: str, path: str, headers: dict[str, str], chunks: list[bytes],
          query: str = "") -> tuple[int, dict[bytes, bytes], int]:
    """One request through the ASGI guard: (status, response headers, body chunks the application asked for)."""
    asked = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if asked <= len(chunks):
            return {"type": "http.request", "body": chunks[asked - 1], "more_body": asked < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string":
             query.encode(), "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
             "root_path": ""}
    asyncio.run(guard(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start.get("headers", [])), asked


@pytest.fixture
def guard() -> BoundedInput:
    return BoundedInput(inner_app(), max_body_bytes=LIMIT, admin_token=TOKEN)


@pytest.mark.parametrize(("authorization", "query"), [
    (None, ""),                                # missing
    ("Bearer wrong", ""),                      # wrong
    ("Bearer " + TOKEN[:-1], ""),              # a prefix of the right token
    ("Bearer " + TOKEN + "x", ""),             # the right token with a suffix
    ("Basic " + TOKEN, ""),                    # the right secret in another scheme
    ("Bearer", ""),                            # a scheme without credentials
    (None, f"token={TOKEN}"),                  # in the query string: never accepted
])
def test_admin_without_the_right_token_is_401_before_the_body_is_read(guard: BoundedInput, authorization: str | None,
                                                                      query: str) -> None:
    headers = {"content-type": "application/json", "content-length": "5"}
    if authorization is not None:
        headers["authorization"] = authorization
    status, response_headers, asked = drive(guard, "POST", "/v1/clusters", headers, [b"nope!"], query)
    assert status == 401
    assert response_headers[b"www-authenticate"] == b"Bearer"
    assert asked == 0, "the body was read before the refusal"


def test_admin_disabled_without_a_configured_token_is_403() -> None:
    assert admin_refusal(None, f"Bearer {TOKEN}") == (403, "admin endpoints are disabled: set "
                                                          "FRAMEWATCH_ADMIN_TOKEN to enable them")
    assert admin_refusal(TOKEN, f"Bearer {TOKEN}") is None
    assert admin_refusal(TOKEN, f"bearer   {TOKEN}  ") is None  # scheme is case-insensitive (RFC 6750)


def test_declared_body_over_the_limit_is_413_unread(guard: BoundedInput) -> None:
    for path, auth in (("/v1/clusters", {"authorization": f"Bearer {TOKEN}"}), ("/v1/status", {})):
        status, _, asked = drive(guard, "POST", path, {"content-length": str(LIMIT + 1), **auth}, [b"x"])
        assert (status, asked) == (413, 0)


def test_streamed_body_over_the_limit_is_413_after_at_most_the_limit(guard: BoundedInput) -> None:
    chunks = [b"x" * 400] * 10  # chunked: no Content-Length, 4,000 bytes in all
    status, _, asked = drive(guard, "POST", "/v1/status", {"transfer-encoding": "chunked"}, chunks)
    assert status == 413
    assert asked * 400 <= LIMIT + 400  # reading stopped at the first chunk past the limit


def test_body_at_the_limit_is_read(guard: BoundedInput) -> None:
    status, _, _ = drive(guard, "POST", "/v1/status", {"content-length": str(LIMIT)}, [b"x" * LIMIT])
    assert status == 200


def test_invalid_content_length_is_400(guard: BoundedInput) -> None:
    assert drive(guard, "POST", "/v1/status", {"content-length": "12abc"}, [b"x"])[0] == 400


def test_ui_gets_security_headers_and_other_paths_do_not(guard: BoundedInput) -> None:
    _, headers, _ = drive(guard, "GET", "/ui", {}, [b""])
    for key, value in UI_SECURITY_HEADERS:
        assert headers[key] == value
    _, headers, _ = drive(guard, "POST", "/v1/status", {"content-length": "0"}, [b""])
    assert b"content-security-policy" not in headers


def test_the_sidecar_app_is_guarded() -> None:
    """create_app installs the guard: a big body to a real route is 413, probes still answer."""
    app = create_app(Metrics(), ConsumerState(), SlidingCounts(), clusters=list, max_body_bytes=LIMIT,
                     admin_token=TOKEN)
    with TestClient(app) as client:
        assert client.post("/v1/status", content=b"x" * (LIMIT + 1)).status_code == 413
        assert client.post("/v1/clusters", content=b"{}").status_code == 401
        assert client.get("/healthz").status_code == 200
