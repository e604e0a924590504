"""Issue 21.6/21.7 on the triage surface, in process: the registry path only for admins, promote of an unknown
candidate is a 404, every id is validated by a full match (a trailing newline is not an id), and the incident
and candidate stores are bounded by settings (entries and bytes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.framing.registry import RegistryError, parse_registry
from monitor.settings import Settings, SettingsError
from monitor.triage.incidents import IncidentStore
from monitor.triage.registry_edit import RegistryEditError, add_cluster, valid_cluster_id
from tests.test_triage import ADMIN_TOKEN, PIRATE, in_process, pirate_mix

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_registry_path_is_shown_to_admins_only(tmp_path: Path) -> None:
    ip = in_process(tmp_path)
    anonymous = ip.client.get("/v1/clusters")
    assert anonymous.status_code == 200
    assert "path" not in anonymous.json()["registry"] and str(ip.path) not in anonymous.text
    wrong = ip.client.get("/v1/clusters", headers={"Authorization": "Bearer wrong"})
    assert str(ip.path) not in wrong.text
    admin = ip.client.get("/v1/clusters", headers=AUTH).json()
    assert admin["registry"]["path"] == str(ip.path)
    assert admin["registry"]["digest"] == anonymous.json()["registry"]["digest"]


def test_promote_of_an_unknown_candidate_is_404_even_with_phrases(tmp_path: Path) -> None:
    ip = in_process(tmp_path)
    before = ip.path.read_bytes()
    r = ip.client.post("/v1/candidates/cand_0123456789abcdef/promote", headers=AUTH,
                       json={"id": "made_up", "phrases": ["Anything at all."]})
    assert r.status_code == 404, r.text
    assert ip.client.post("/v1/candidates/cand_0123456789abcdef/promote", headers=AUTH).status_code == 404
    assert ip.path.read_bytes() == before  # nothing written
    # a known candidate still promotes
    batch = pirate_mix(2)
    for i in range(0, len(batch), 100):
        ip.triage.on_verdicts(batch[i:i + 100])
    (cand,) = ip.client.get("/v1/candidates").json()["candidates"]
    r = ip.client.post(f"/v1/candidates/{cand['id']}/promote", headers=AUTH, json={"id": "pirate_persona"})
    assert r.status_code == 201 and r.json()["phrases"] == [PIRATE]


@pytest.mark.parametrize("bad", ["pirate_persona\n", "pirate\npersona", "Pirate", "_x", "x" * 64, "", "pirate "])
def test_cluster_ids_are_full_matches(tmp_path: Path, bad: str) -> None:
    assert not valid_cluster_id(bad)
    with pytest.raises(RegistryError):
        parse_registry({"clusters": [{"id": bad, "phrases": ["a phrase"]}]})
    ip = in_process(tmp_path)
    with pytest.raises(RegistryEditError) as exc:
        add_cluster(ip.path, bad, ["a phrase"])
    assert exc.value.status == 422
    r = ip.client.post("/v1/clusters", headers=AUTH, json={"id": bad, "phrases": ["a phrase"]})
    assert r.status_code == 422, r.text
    assert bad not in [c["id"] for c in ip.client.get("/v1/clusters").json()["clusters"]]


def test_path_and_query_ids_are_full_matches(tmp_path: Path) -> None:
    ip = in_process(tmp_path)
    assert valid_cluster_id("tag_wrapper") and valid_cluster_id("x" * 63)
    assert ip.client.delete("/v1/clusters/tag_wrapper%0A", headers=AUTH).status_code == 422
    assert ip.client.post("/v1/clusters/tag_wrapper%0A/phrases", headers=AUTH,
                          json={"phrases": ["more"]}).status_code == 422
    assert ip.client.post("/v1/candidates/cand_12%0A/promote", headers=AUTH).status_code == 422
    assert ip.client.get("/v1/incidents", params={"cluster": "tag_wrapper\n"}).status_code == 422
    assert ip.client.get("/v1/incidents", params={"candidate": "cand_1\n"}).status_code == 422
    assert ip.client.get("/v1/incidents", params={"framing": "none\n"}).status_code == 422
    assert ip.client.get("/v1/incidents", params={"framing": "exact", "cluster": "none"}).status_code == 200
    assert "tag_wrapper" in [c["id"] for c in ip.client.get("/v1/clusters").json()["clusters"]]


def _rec(i: int, text: str = "x") -> dict[str, object]:
    return {"event_id": f"e{i}", "kafka": {"topic": "t", "partition": i % 3, "offset": i}, "prompt": text,
            "flagged_at": f"2026-12-02T08:{i // 60 % 60:02d}:{i % 60:02d}+00:00"}


def test_incident_store_is_bounded_by_entries_and_bytes() -> None:
    store = IncidentStore(capacity=50, max_bytes=10**9)
    store.add(_rec(i) for i in range(500))
    assert len(store) == 50
    assert [r["event_id"] for r in store.query(limit=3)] == ["e499", "e498", "e497"]  # the newest stay
    store = IncidentStore(capacity=10**6, max_bytes=20_000)
    store.add(_rec(i, "y" * 1000) for i in range(500))
    assert store.bytes <= 20_000 and 0 < len(store) < 25
    assert store.query(limit=1)[0]["event_id"] == "e499"
    # a copy of an event already held (a redelivered batch) is ignored: the first copy stays
    first = store.query(limit=1)[0]
    store.add([{**_rec(499, "y" * 1000), "flagged_at": "2027-01-01T00:00:00+00:00"}])
    assert store.query(limit=1)[0] == first


def test_store_bounds_come_from_settings(tmp_path: Path) -> None:
    env = {"FRAMEWATCH_INCIDENTS_MAX_BYTES": "12345", "FRAMEWATCH_EMERGING_MAX_MEMBERS": "3",
           "FRAMEWATCH_EMERGING_MAX_EXAMPLES": "2"}
    s = Settings.load(env=env)
    assert (s.incidents_max_bytes, s.emerging_max_members, s.emerging_max_examples) == (12345, 3, 2)
    with pytest.raises(SettingsError):
        Settings.load(env={"FRAMEWATCH_INCIDENTS_MAX_BYTES": "0"})
    ip = in_process(tmp_path)
    assert ip.triage.incidents.max_bytes == ip.triage.settings.incidents_max_bytes
    assert ip.triage.emerging.cfg.max_examples == ip.triage.settings.emerging_max_examples
    batch = pirate_mix(3)
    for i in range(0, len(batch), 100):
        ip.triage.on_verdicts(batch[i:i + 100])
    for cand in ip.client.get("/v1/candidates", params={"all": "true", "limit": 500}).json()["candidates"]:
        assert len(cand["examples"]) <= ip.triage.settings.emerging_max_examples
        assert len(cand["members"]) <= ip.triage.settings.emerging_max_members
    assert len(json.dumps(ip.client.get("/v1/incidents", params={"limit": 1000}).json())) < 10**6
