"""The triage page in a real headless Chromium (Debian ``chromium``, driven by Playwright for Python).

After real traffic through a real broker: the page loads from the sidecar (assets shipped in the package, no
CDN), shows a registry cluster with non-zero counts and the emerging candidate, and a click on "Promote"
(answering the token prompt) adds a cluster to the registry. With ``FRAMEWATCH_UPDATE_SCREENSHOT=1`` it saves
the page to docs/triage.png for the docs; otherwise to the test's temporary directory (a test run leaves
the working tree as it was).
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor._tansu import LocalBroker
from tests.conftest import needs_model
from tests.harness import REPO
from tests.test_triage import (
    ADMIN_TOKEN,
    DLQ,
    FLAGGED,
    PARTITIONS,
    PIRATE,
    TOPIC,
    http,
    load_pools,
    needs_classifier,
    start_triage_sidecar,
    traffic_until_candidate,
    writable_registry,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS_SCREENSHOT = REPO / "docs" / "triage.png"

pytestmark = [
    pytest.mark.broker, needs_model, needs_classifier,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no chromium: run scripts/system-deps.sh"),
]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    b = LocalBroker(log_path=tmp_path / "broker.log").start()
    b.create_topics({TOPIC: PARTITIONS, DLQ: 1, FLAGGED: PARTITIONS})
    yield b
    b.stop()


def test_triage_page_shows_clusters_and_promotes_a_candidate(broker: LocalBroker, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev dependency)")
    registry = writable_registry(tmp_path)
    s = start_triage_sidecar(broker, tmp_path, "sidecar", registry)
    try:
        cand, _, _ = traffic_until_candidate(broker, s, load_pools(), random.Random(11), tagged=20)
        cluster_id = f"emerging_{cand['id']}"
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                requests: list[str] = []
                page.on("request", lambda r: requests.append(r.url))
                page.goto(s.url + "/ui")
                row = page.locator('#clusters tr[data-cluster="tag_wrapper"] td.events')
                row.wait_for()
                page.wait_for_function(
                    "() => Number(document.querySelector('#clusters tr[data-cluster=\"tag_wrapper\"] td.events')"
                    ".textContent) > 0")
                assert int(row.text_content() or "0") > 0
                card = page.locator(f'.candidate[data-candidate="{cand["id"]}"]')
                card.wait_for()
                assert PIRATE in (card.text_content() or "")
                assert page.locator("#incidents tbody tr").count() > 0
                status_line = page.locator("#status").text_content() or ""
                assert "all replicas" in status_line and "this replica" not in status_line, status_line
                shot = DOCS_SCREENSHOT if os.environ.get("FRAMEWATCH_UPDATE_SCREENSHOT") else tmp_path / "triage.png"
                page.screenshot(path=str(shot), full_page=True)
                assert all(u.startswith(s.url) for u in requests), "the page must not load anything external"

                page.once("dialog", lambda d: d.accept(ADMIN_TOKEN))
                page.locator(f'button[data-candidate="{cand["id"]}"]').click()
                page.locator(f'#clusters tr[data-cluster="{cluster_id}"]').wait_for()
                assert "promoted" in (page.locator("#flash").text_content() or "")
            finally:
                browser.close()
        # The promotion went to the registry topic (every replica applies it); the pod's file is the base.
        assert cluster_id not in registry.read_text()
        status, state = http(s, "GET", "/v1/registry", token=ADMIN_TOKEN)
        assert status == 200 and state["edits"][cluster_id]["phrases"][0] == PIRATE
    finally:
        s.stop()
