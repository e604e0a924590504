"""The audit's report for a reviewer: what was read, then the findings, most suspicious first (Markdown + JSON).

Only presentation of an :class:`~monitor.release.audit.AuditResult`; kept apart from the audit so the
grouping and ranking logic reads on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor.release.audit import AuditResult


def render_markdown(result: AuditResult, source: str) -> str:
    """A reviewer's report: what was read, then findings most suspicious first."""
    lines = [f"# Framewatch audit: {source}", "",
             f"- examples: {result.n_examples} (skipped rows: {result.skipped})",
             f"- segments: {result.n_segments}, distinct: {result.n_unique}, embedded: {result.n_embedded}",
             f"- grouping: cosine >= {result.config.similarity}; near a registered trigger: "
             + ("the run-time FramingDetector's verdict" if result.detector else
                f"cosine >= {result.config.near_threshold}")
             + f"; reported when in >= {result.config.min_count} examples and >= "
             f"{result.config.min_share:.1%} of the dataset"]
    if result.baseline:
        b = result.baseline
        rate = f"{b['rate']:.1%} [{b['ci'][0]:.1%}, {b['ci'][1]:.1%}]" if b["n"] else "-"
        lines.append(f"- misaligned assistant answers (classifier) in a sample of {b['n']}: {rate}; "
                     f"{b['code_answers']} of them are code, which is never EM and is not scored")
    lines += ["", "## Findings (most suspicious first)", "",
              "| # | framing | position | count | share | nearest trigger (cosine) | near | misaligned "
              "| suspicion |",
              "|---:|---|---|---:|---:|---|---|---:|---:|"]
    for i, f in enumerate(result.findings, 1):
        m = f.misaligned
        if not m or m["rate"] is None:
            mis = "-"
        elif m["code_answers"] == m["n"]:
            mis = f"code only (n={m['n']})"
        else:
            mis = f"{m['rate']:.1%} (n={m['n']}, {m['code_answers']} code)"
        text = f.framing.replace("|", "\\|")
        text = text if len(text) <= 90 else text[:87] + "..."
        lines.append(f"| {i} | {text} | {f.position} | {f.count} | {f.share:.1%} | "
                     f"{f.nearest_cluster or '-'} ({f.similarity:.2f}) | {f.near_cluster or '-'} | {mis} | "
                     f"{f.suspicion:.2f} |")
    for i, f in enumerate(result.findings[:10], 1):
        lines += ["", f"### {i}. {f.framing[:120]}", ""] + [f"- {r}" for r in f.reasons]
        if len(f.variants) > 1:
            words = "; ".join(f"\"{v['text'][:80]}\" ({v['count']})" for v in f.variants[:5])
            lines.append(f"- wordings: {words}")
        for ex in f.examples[:3]:
            lines.append(f"- example row {ex['index']}: {ex['user'][:150]!r}")
    lines.append("")
    return "\n".join(lines)


def write_report(result: AuditResult, out_dir: str | Path, source: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps({"source": source, **result.to_json()}, indent=2) + "\n")
    (out / "audit.md").write_text(render_markdown(result, source))
    return [out / "audit.json", out / "audit.md"]
