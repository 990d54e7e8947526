"""The report of real stored records writes the committed tables byte for byte.

``data/report_snapshot/results`` holds the records of ``results/quickstart`` (AQLM and CRVQ at
1 bit on SmolLM2) and ``results/families`` (the unquantized SmolLM2 and Gemma 3, RTN 4 on
Gemma 3) as the harness wrote them, without their per-layer logs (no table reads those), and
the suite copies. ``data/report_snapshot/tables`` is what the report wrote from them: the
results table (Markdown, LaTeX, CSV), the failures, the suites' paired comparisons and the
paper layout with the published Llama-2 numbers. A change to how records are read, aggregated
or formatted that alters a table fails here; if the change is intended, rewrite the snapshot
with ``UPDATE_REPORT_SNAPSHOT=1 pytest tests/harness/test_report_snapshot.py`` and review the diff.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness.report import write_report
from harness.report.paper import write_paper_tables
from harness.report.reference import load_reference
from harness.store import ResultStore
from tests.fixtures.report_snapshot import SNAPSHOT as DATA

REPO = Path(__file__).resolve().parents[2]
#: The pairs the suite copies ask for (`report.compare` of quickstart.yaml and families.yaml).
PAIRS = [("aqlm", "crvq"), ("aqlm-harness", "crvq-harness")]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("snapshot") / "mix"
    shutil.copytree(DATA / "results", root)
    store = ResultStore(root)
    write_report(store, title=root.name, plots=(), html=False, compare=PAIRS)
    write_paper_tables(store, reference=load_reference(REPO / "suites" / "paper" / "reference_llama2.yaml"))
    return store.tables_dir


def _expected() -> list[str]:
    return sorted(p.name for p in (DATA / "tables").iterdir())


def test_snapshot_lists_the_tables(written: Path) -> None:
    if os.environ.get("UPDATE_REPORT_SNAPSHOT"):
        shutil.rmtree(DATA / "tables", ignore_errors=True)
        shutil.copytree(written, DATA / "tables")
    assert sorted(p.name for p in written.iterdir()) == _expected()
    assert {"results.md", "results.tex", "results.csv", "compare.md", "paper.md", "paper.tex"} <= set(_expected())


@pytest.mark.parametrize("name", _expected())
def test_table_is_byte_identical(written: Path, name: str) -> None:
    assert (written / name).read_bytes() == (DATA / "tables" / name).read_bytes(), (
        f"tables/{name} differs from {DATA / 'tables' / name}")
