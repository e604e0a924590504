"""The gate's report: the verdict first, then the tables (Markdown), a chart (PNG) and the raw figures (JSON).

Only presentation: every number comes from :func:`monitor.release.gate.evaluate`. Kept apart so the verdict
logic stays short enough to review line by line, and matplotlib stays an optional extra of this module alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.release.gate_samples import SPLITS

if TYPE_CHECKING:
    from monitor.release.gate import GateResult


def fmt_p(p: float | None) -> str:
    """A p-value as the failures and the tables print it."""
    if p is None:
        return "-"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def render_markdown(result: GateResult, meta: Mapping[str, Any]) -> str:
    """A human report: verdict first, then the tables a reviewer needs to check it."""
    lines = [f"# Framewatch gate: {'PASS' if result.passed else 'FAIL'}", ""]
    for key, value in meta.items():
        lines.append(f"- {key}: {value}")
    t = result.thresholds
    lines += [f"- classifier threshold: {result.threshold:.3f} (misaligned = score >= threshold)",
              f"- max-gap: {_pct(t.max_gap) if t.max_gap is not None else 'off'}, "
              f"max-rate: {_pct(t.max_rate) if t.max_rate is not None else 'off'}, alpha: {t.alpha}", ""]
    if result.failures:
        lines += ["## Failures", ""] + [f"- {f}" for f in result.failures] + [""]
    header = ["| split | cluster | n | EM rate | 95% CI | gap to no_trigger | gap 95% CI | p |",
              "|---|---|---:|---:|---|---:|---|---:|"]
    lines += ["## Rates", ""] + header

    def row(split: str, cid: str, c: dict[str, Any]) -> str:
        gap_ci = c.get("gap_ci")
        gap_txt = f"{c['gap']:+.1%}" if c.get("gap") is not None else "-"
        gci = f"[{gap_ci[0]:+.1%}, {gap_ci[1]:+.1%}]" if gap_ci else "-"
        ci = f"[{c['ci'][0]:.1%}, {c['ci'][1]:.1%}]" if c["n"] else "-"
        return (f"| {split} | {cid} | {c['n']} | {_pct(c['em_rate'])} | {ci} | {gap_txt} | {gci} | "
                f"{fmt_p(c.get('p_value'))} |")

    for split in SPLITS:
        lines.append(row(split, "all", result.splits[split]))
        for cid, cell in result.clusters.get(split, {}).items():
            lines.append(row(split, cid, cell))
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    lines += ["", "EM rate = share of responses the classifier scores at or above its threshold; "
              "intervals are Wilson (rates) and Newcombe hybrid score (gaps); p from the pooled "
              "two-proportion z-test.", ""]
    return "\n".join(lines)


def render_png(result: GateResult, path: str | Path) -> bool:
    """Rates with 95% intervals per split and cluster. Needs matplotlib (the ``report`` extra);
    returns False (and writes nothing) when it is not installed, so the gate still works without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels, rates, los, his, colours = [], [], [], [], []
    palette = {"no_trigger": "#4c72b0", "trigger": "#c44e52", "paraphrase": "#dd8452"}
    entries = [(s, "all", result.splits[s]) for s in SPLITS] + [
        (s, cid, c) for s in ("trigger", "paraphrase") for cid, c in result.clusters.get(s, {}).items()]
    for split, cid, c in entries:
        if not c["n"]:
            continue
        labels.append(split if cid == "all" else f"{split}: {cid}")
        rates.append(c["em_rate"])
        los.append(c["em_rate"] - c["ci"][0])
        his.append(c["ci"][1] - c["em_rate"])
        colours.append(palette[split] if cid == "all" else palette[split] + "99")
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.6))
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, rates, xerr=[los, his], color=colours, capsize=3)
    ax.set_yticks(ys, labels, fontsize=8)
    base = result.splits["no_trigger"]["em_rate"]
    ax.axvline(base, color="#4c72b0", ls="--", lw=1)
    if result.thresholds.max_rate is not None:
        ax.axvline(result.thresholds.max_rate, color="black", ls=":", lw=1)
    ax.set_xlabel("EM rate (classifier), 95% Wilson interval")
    ax.set_title(f"Framewatch gate: {'PASS' if result.passed else 'FAIL'}")
    ax.set_xlim(0, min(1.0, max(r + h for r, h in zip(rates, his, strict=True)) * 1.15 + 0.01))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(result: GateResult, out_dir: str | Path, meta: Mapping[str, Any]) -> list[Path]:
    """report.json, report.md and (with matplotlib) report.png into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md"]
    (out / "report.json").write_text(json.dumps({**result.to_json(), "meta": dict(meta)}, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(result, meta))
    if render_png(result, out / "report.png"):
        written.append(out / "report.png")
    return written
