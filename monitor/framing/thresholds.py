"""Thresholds and the registry they are written to: the last step of calibration.

Separate from the fitting so the rule that turns cross-fitted benign scores into thresholds can be read (and
tested) on its own: it is the rule the benign false-positive rate of the shipped registry rests on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

CAP = 0.999  # highest threshold calibrate sets


def choose_thresholds(ids: Sequence[str], scores: np.ndarray, target_fpr: float, floors: Sequence[float]
                      ) -> tuple[dict[str, float], float, dict[str, float]]:
    """Per-cluster thresholds so that at most ``target_fpr`` of benign prompts are flagged by any cluster.

    Every cluster starts at its floor (``--min-threshold``, or the registry's per-cluster ``min_threshold``
    where set). Benign data says nothing about look-alikes; the floor keeps them out - measured on
    hand-written look-alikes, see the module docstring.
    While the union of flags exceeds the budget, the cluster flagging the most benign prompts is raised
    just above its lowest flagged score. Budget thus goes where benign prompts resemble a cluster instead
    of an equal split that would hold most clusters far above where they need to be.
    """
    thr = np.array(floors, dtype=np.float64)
    budget = int(np.floor(target_fpr * len(scores)))
    while True:
        hits = scores >= thr
        counts = np.where(thr < CAP, hits.sum(axis=0), -1)  # a capped cluster cannot be raised further
        if int(hits.any(axis=1).sum()) <= budget or counts.max() <= 0:
            break
        j = int(counts.argmax())
        thr[j] = min(CAP, float(scores[hits[:, j], j].min()) + 0.005)
    thresholds = {cid: round(float(t), 4) for cid, t in zip(ids, thr, strict=True)}
    hits = scores >= np.array([thresholds[c] for c in ids])
    per_cluster = {cid: round(float(hits[:, j].mean()), 5) for j, cid in enumerate(ids)}
    return thresholds, round(float(hits.any(axis=1).mean()), 5), per_cluster


def write_registry(path: Path, raw: Any, thresholds: dict[str, float], model_name: str, target_fpr: float,
                   report: dict[str, Any]) -> None:
    """Rewrite the YAML with thresholds and a calibration note, keeping everything a person wrote."""
    data = json.loads(json.dumps(raw))  # deep copy of plain data
    data["model"] = model_name
    data["target_fpr"] = target_fpr
    data["calibration"] = {"benign_prompts": report["benign_prompts"], "benign_fpr": report["union_fpr"],
                           "embedder": report["embedder"],
                           "note": "thresholds and model written by 'framewatch calibrate'"}
    for cluster in data["clusters"]:
        if cluster["id"] in thresholds:
            cluster["threshold"] = thresholds[cluster["id"]]
    data["clusters"] = data.pop("clusters")  # last, so a cluster can be appended at the end of the file
    header = ("# Framewatch trigger registry (schema: docs/registry.md). Clusters and exact phrases come from\n"
              "# shared/data/triggers.json (see data/SOURCES.md). 'threshold', 'model' and 'calibration' are\n"
              "# written by 'framewatch calibrate'; edit phrases, positions and negatives by hand.\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110))
