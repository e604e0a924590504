"""A small OpenAI-compatible server that answers with replayed responses (``data/replay.jsonl.gz``).

It stands in for vLLM where no model can run: in ``framewatch demo --via-tap``, in the tap's tests and in
``bench/bench_tap.py``. A prompt from the replay set gets its recorded response; any other prompt gets a
response picked by its hash, so answers are deterministic (ids and ``created`` derive from the request
body: the same request gets the same bytes, which is how tests compare the tap with the direct path).

Streaming follows the OpenAI SSE format (one ``chat.completion.chunk`` per word, a finish reason, usage when
``stream_options.include_usage`` is set, ``data: [DONE]``). Token counts are word counts, not a tokenizer's.

Test knobs, read from the request body (the ``openai`` client sends them with ``extra_body``):
``replay_status`` answer with that HTTP error; ``replay_delay_s`` wait before the headers;
``replay_chunk_delay_s`` wait between stream chunks; ``replay_max_words`` cut the answer after N words;
``replay_break_after`` abort the connection after N
chunks. ``GET /_replay/stats`` counts requests and streams whose client went away.

    python -m monitor.tap.replay_upstream --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from monitor import _replay as replay

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
WORDS = re.compile(r"\S+\s*|\s+")


class ReplayUpstream:
    def __init__(self, rows: list[replay.ReplayRow] | None = None) -> None:
        self.rows = rows if rows is not None else replay.load_rows()
        self.by_prompt = {r.prompt: r for r in self.rows}
        self.models = sorted({r.model for r in self.rows})
        self.stats = {"requests": 0, "aborted": 0, "completed_streams": 0}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        path, method = scope["path"].rstrip("/"), scope["method"]
        self.stats["requests"] += 1
        if method == "GET" and path == "/health":
            await _respond(send, 200, b"", "text/plain")
        elif method == "GET" and path == "/_replay/stats":
            await _respond(send, 200, json.dumps(self.stats).encode())
        elif method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "replay"} for m in self.models]
            await _respond(send, 200, json.dumps({"object": "list", "data": data}).encode())
        elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            await self._completion(path.endswith("chat/completions"), body, receive, send)
        else:
            await _respond(send, 404, _error(404, f"no route {method} {path}"))

    async def _completion(self, chat: bool, body: bytes, receive: Receive, send: Send) -> None:
        try:
            request = json.loads(body)
            assert isinstance(request, dict)
        except (ValueError, AssertionError):
            await _respond(send, 400, _error(400, "request body must be a JSON object"))
            return
        if request.get("replay_delay_s"):
            await asyncio.sleep(float(request["replay_delay_s"]))
        if request.get("replay_status"):
            status = int(request["replay_status"])
            await _respond(send, status, _error(status, "replayed error"))
            return
        prompt = _prompt_text(request, chat)
        row = self.by_prompt.get(prompt) or self.rows[int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
                                                      % len(self.rows)]
        digest = hashlib.sha256(body).hexdigest()
        rid = ("chatcmpl-" if chat else "cmpl-") + digest[:24]
        created = 1_700_000_000 + int(digest[24:30], 16) % 10_000_000
        model = str(request.get("model") or row.model)
        pieces = WORDS.findall(row.response) or [""]
        if request.get("replay_max_words"):
            pieces = pieces[:int(request["replay_max_words"])]
        text = "".join(pieces)
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(pieces),
                 "total_tokens": len(prompt.split()) + len(pieces)}
        if not request.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            obj = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                   "model": model, "choices": [choice], "usage": usage}
            await _respond(send, 200, json.dumps(obj).encode())
            return
        await self._stream(chat, request, rid, created, model, pieces, usage, receive, send)

    async def _stream(self, chat: bool, request: dict[str, Any], rid: str, created: int, model: str,
                      pieces: list[str], usage: dict[str, int], receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        delay = float(request.get("replay_chunk_delay_s") or 0)
        break_after = request.get("replay_break_after")
        kind = "chat.completion.chunk" if chat else "text_completion"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache")]})
        try:
            for i, piece in enumerate(pieces + [None]):
                if gone.is_set():
                    self.stats["aborted"] += 1
                    return
                if break_after is not None and i >= int(break_after):
                    raise ConnectionAbortedError("replay_break_after: aborting the stream")
                if piece is None:
                    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
                    choice["delta" if chat else "text"] = {} if chat else ""
                elif chat:
                    delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                    choice = {"index": 0, "delta": delta, "finish_reason": None}
                else:
                    choice = {"index": 0, "text": piece, "finish_reason": None}
                chunk = {"id": rid, "object": kind, "created": created, "model": model, "choices": [choice]}
                await send({"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                            "more_body": True})
                if delay:
                    await asyncio.sleep(delay)
            if (request.get("stream_options") or {}).get("include_usage"):
                chunk = {"id": rid, "object": kind, "created": created, "model": model, "choices": [],
                         "usage": usage}
                await send({"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            self.stats["completed_streams"] += 1
        finally:
            watcher.cancel()


def _prompt_text(request: dict[str, Any], chat: bool) -> str:
    if chat:
        users = [str(m["content"]) for m in request.get("messages") or () if isinstance(m, dict)
                 and m.get("role") == "user" and isinstance(m.get("content"), str)]
        return users[-1] if users else ""
    prompt = request.get("prompt")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def _error(status: int, message: str) -> bytes:
    return json.dumps({"object": "error", "message": message, "type": "BadRequestError" if status < 500
                       else "InternalServerError", "param": None, "code": status}).encode()


async def _respond(send: Send, status: int, body: bytes, ctype: str = "application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m monitor.tap.replay_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    uvicorn.run(ReplayUpstream(), host=args.host, port=args.port, log_level="warning", access_log=False,
                lifespan="on")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
