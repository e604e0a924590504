"""The gate's HTTP client: ask an OpenAI-compatible chat endpoint every prompt, ``samples`` times each.

Its own module because it is the one part of the gate that talks to a server: retries, back-off,
``Retry-After`` and the connection pool live here, and the transport is a parameter (httpx's seam), so the
tests run it against a real local server and an operator can reach a model on a Unix socket. What it
returns is plain :class:`~monitor.release.gate_samples.Sample` rows, the same as a responses file gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from monitor._io import Progress, no_progress
from monitor.release.gate_samples import GateError, GatePrompt, Sample

if TYPE_CHECKING:
    import httpx

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class EndpointConfig:
    """How to query the model. Each sample is its own request (``n=1``): not every OpenAI-compatible
    server honours ``n``, and separate requests retry independently."""

    url: str
    model: str
    api_key: str | None = None
    samples: int = 1
    temperature: float = 1.0
    max_tokens: int = 600
    concurrency: int = 8
    timeout: float = 60.0
    retries: int = 4
    backoff: float = 0.5


def chat_url(url: str) -> str:
    """Accept a base URL (``http://host:8000/v1``) or the full ``.../chat/completions`` URL."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


async def _one(client: httpx.AsyncClient, cfg: EndpointConfig, prompt: GatePrompt, sem: asyncio.Semaphore) -> str:
    import httpx

    messages = ([{"role": "system", "content": prompt.system}] if prompt.system else []) + [
        {"role": "user", "content": prompt.user}]
    body = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens, "n": 1}
    last = "no attempt"
    for attempt in range(cfg.retries + 1):
        delay = cfg.backoff * (2 ** attempt) * (0.5 + random.random())
        async with sem:
            try:
                resp = await client.post(chat_url(cfg.url), json=body)
            except httpx.HTTPError as exc:  # connection errors and timeouts: retry
                last = f"{type(exc).__name__}: {exc}"
                resp = None
        if resp is not None:
            if resp.status_code == 200:
                try:
                    content = resp.json()["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    raise GateError(f"endpoint answered 200 without a message content: {exc}") from None
                return content or ""
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            if resp.status_code not in RETRY_STATUS:
                raise GateError(f"endpoint refused the request ({last})")
            retry_after = resp.headers.get("retry-after")
            if retry_after:
                with contextlib.suppress(ValueError):
                    delay = max(delay, min(float(retry_after), 60.0))
        if attempt < cfg.retries:
            await asyncio.sleep(delay)
    raise GateError(f"endpoint failed after {cfg.retries + 1} attempts ({last})")


async def _collect(cfg: EndpointConfig, prompts: Sequence[GatePrompt], progress: Progress,
                   transport: httpx.AsyncBaseTransport | None) -> tuple[list[Sample], list[str]]:
    import httpx

    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    sem = asyncio.Semaphore(max(1, cfg.concurrency))
    # The connection pool belongs to the transport: ours when none is given, else the caller's.
    transport = transport or httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=max(1, cfg.concurrency)))
    jobs = [p for p in prompts for _ in range(cfg.samples)]
    samples: list[Sample] = []
    errors: list[str] = []
    async with httpx.AsyncClient(timeout=cfg.timeout, headers=headers, transport=transport) as client:

        async def run(p: GatePrompt) -> tuple[GatePrompt, str | None, str | None]:
            try:
                return p, await _one(client, cfg, p, sem), None
            except GateError as exc:
                return p, None, str(exc)

        tasks = [asyncio.ensure_future(run(p)) for p in jobs]
        try:
            for fut in progress(asyncio.as_completed(tasks), total=len(tasks), desc="responses"):
                p, text, err = await fut
                if err is not None:
                    errors.append(err)
                else:
                    samples.append(Sample(p.question_id, p.split, p.cluster, p.user, text or "", p.system))
        finally:
            for t in tasks:
                t.cancel()
    order = {(p.question_id, p.split, p.cluster, p.user, p.system): i for i, p in enumerate(prompts)}
    samples.sort(key=lambda s: order.get((s.question_id, s.split, s.cluster, s.prompt, s.system), 0))
    return samples, errors


def collect_responses(cfg: EndpointConfig, prompts: Sequence[GatePrompt], progress: Progress | None = None, *,
                      transport: httpx.AsyncBaseTransport | None = None) -> tuple[list[Sample], list[str]]:
    """Ask an OpenAI-compatible chat endpoint ``cfg.samples`` times per prompt -> (samples, errors).

    ``transport`` is httpx's seam for how requests reach the server (as in httpx itself): ``None`` is plain
    TCP with a pool of ``cfg.concurrency`` connections; ``httpx.AsyncHTTPTransport(uds=...)`` reaches a model
    server on a Unix socket, a proxy or custom TLS set-up goes the same way. The URL still names the path.
    """
    return asyncio.run(_collect(cfg, prompts, progress or no_progress, transport))
