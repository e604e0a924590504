"""`eval-framing --write-docs`: the docs' accuracy table is the command's output, and only that block changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.commands.eval_framing import BEGIN_MARK, END_MARK, write_docs_table


def test_table_replaces_only_the_marked_block(tmp_path: Path) -> None:
    doc = tmp_path / "registry.md"
    doc.write_text(f"# Title\n\nbefore\n\n{BEGIN_MARK}\nold table\n{END_MARK}\n\nafter\n", encoding="utf-8")
    write_docs_table(str(doc), "| new | table |", {"prompts": 12, "segments_embedded_per_prompt": 1.5})
    text = doc.read_text(encoding="utf-8")
    assert "old table" not in text
    assert "| new | table |" in text and "12 prompts; 1.5 segments embedded per prompt." in text
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith(f"{END_MARK}\n\nafter\n")
    write_docs_table(str(doc), "| newer |", {"prompts": 1, "segments_embedded_per_prompt": 1.0})
    assert doc.read_text(encoding="utf-8").count(BEGIN_MARK) == 1 and "| new | table |" not in doc.read_text()


def test_a_file_without_markers_is_refused(tmp_path: Path) -> None:
    doc = tmp_path / "other.md"
    doc.write_text("no markers here\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="no eval-framing markers"):
        write_docs_table(str(doc), "| t |", {"prompts": 1, "segments_embedded_per_prompt": 1.0})
    assert doc.read_text() == "no markers here\n"


def test_the_shipped_docs_carry_the_markers() -> None:
    text = (Path(__file__).resolve().parents[3] / "docs" / "registry.md").read_text(encoding="utf-8")
    assert text.count(BEGIN_MARK) == 1 and text.index(BEGIN_MARK) < text.index(END_MARK)
