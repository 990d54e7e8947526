"""``report.html``: the report of a results folder as one self-contained page.

The page holds everything inline — CSS in a ``<style>`` block, plots as base64 ``data:`` URIs —
and loads nothing (no script, no font, no CDN), so it opens offline from the file system and
can be mailed or archived as one file. It shows:

- a header: title, generation time, the number of finished and failed cells;
- the tables that :func:`harness.report.write_report` wrote under ``tables/``: ``results.md``
  first, then the others (comparisons, per-seed tables, ...) as they exist; a table written only
  as CSV is rendered from the CSV; without ``results.md`` the results come from the records;
- every figure under ``plots/`` (one image per figure: the PNG, else the SVG), grouped by kind;
- the failed cells (full message, traceback tail) and the failed evaluations of finished cells;
- the suite files saved by ``harness run`` (``suites/<name>.yaml``) and the stand-in notes;
- the environment of the records (package versions, devices, commit), deduplicated.

All record text is HTML-escaped (Jinja2 autoescaping); Markdown tables are rendered with raw
HTML, links and images disabled.
"""
from __future__ import annotations

import base64
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd

from harness.record import CellRecord, RecordError
from harness.report.tables import evaluation_errors_frame, failures_frame, results_frame, to_markdown
from harness.store import ResultStore, atomic_write_text

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
_TEMPLATE = "report.html.j2"
_MIME = {".png": "image/png", ".svg": "image/svg+xml"}
_PREFERRED = (".png", ".svg")  # one image per figure: bounded size and fast to draw
#: Plot groups by file name, in page order; files in a subfolder are grouped by the subfolder.
_KINDS = (
    ("Perplexity vs bits per weight", re.compile(r"_ppl_vs_bits$")),
    ("Zero-shot accuracy vs bits per weight", re.compile(r"_zeroshot_acc_vs_bits$")),
    ("Pareto fronts", re.compile(r"(^|_)pareto")),
    ("Parameter sweeps", re.compile(r"^sweep_")),
)
_FOLDER_KINDS = {"inspect": "Layer diagnostics"}
#: Extra tables shown first (by file-name prefix); the rest follow alphabetically.
_TABLE_ORDER = ("claims", "compare", "results_by_seed")
_OWN_TABLES = {"results", "failures"}
_TRACEBACK_LINES = 40


@dataclass(frozen=True)
class Section:
    """A titled block of already-safe HTML (rendered Markdown)."""

    id: str
    title: str
    html: str
    source: str = ""  # the file it was read from, relative to the results folder


@dataclass(frozen=True)
class Image:
    """One embedded figure."""

    kind: str
    caption: str
    files: tuple[str, ...]  # paths relative to the results folder
    src: str  # data: URI


# --------------------------------------------------------------------------- Markdown

def _markdown() -> Any:
    from markdown_it import MarkdownIt  # rich's Markdown parser

    # raw HTML is escaped; links and images could load or point outside the page
    return MarkdownIt("commonmark", {"html": False}).enable("table").disable(["image", "link", "autolink"])


def markdown_html(text: str, *, shift: int = 1) -> str:
    """Safe HTML of a Markdown document (headings moved ``shift`` levels down, at most h6)."""
    md = _markdown()
    tokens = md.parse(text)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + shift)}"
    return md.renderer.render(tokens, md.options, {})


def _split_title(text: str) -> tuple[str | None, str]:
    """(the first ``# `` heading, the text without it)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# "):
            return line[2:].strip(), "\n".join(lines[:i] + lines[i + 1:])
        if line.strip():
            break
    return None, text


def _without_failures(text: str) -> str:
    """``results.md`` up to its ``## Failed ...`` sections (shown in full in the Failures section)."""
    match = re.search(r"^## Failed ", text, flags=re.MULTILINE)
    return text[: match.start()] if match else text


# --------------------------------------------------------------------------- sections

def _table_sections(store: ResultStore, records: Sequence[CellRecord]) -> list[Section]:
    """The results table, then every other table under ``tables/`` (Markdown, else CSV)."""
    tables = store.tables_dir
    results_md = tables / "results.md"
    if results_md.is_file():
        text = results_md.read_text(encoding="utf-8")
    else:  # the suite wrote no Markdown: the same table from the records
        text = to_markdown(results_frame(records))
    _, body = _split_title(_without_failures(text))
    sections = [Section("results", "Results", markdown_html(body), "tables/results.md" if results_md.is_file() else "")]

    stems: dict[str, Path] = {}
    for path in sorted(tables.glob("*.md")) + sorted(tables.glob("*.csv")):  # none when tables/ is absent
        if path.stem not in _OWN_TABLES:
            stems.setdefault(path.stem, path)  # Markdown wins over CSV

    def order(stem: str) -> tuple[int, str]:
        first = [i for i, prefix in enumerate(_TABLE_ORDER) if stem.startswith(prefix)]
        return (first[0] if first else len(_TABLE_ORDER), stem)

    for stem in sorted(stems, key=order):
        path = stems[stem]
        try:
            if path.suffix == ".md":
                title, body = _split_title(path.read_text(encoding="utf-8"))
            else:
                title, body = None, pd.read_csv(path, dtype=str, keep_default_na=False).to_markdown(index=False)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            logger.warning("%s: not shown in %s (%s)", path, REPORT_NAME, exc)
            continue
        source = path.relative_to(store.root).as_posix()
        sections.append(Section(f"table-{_slug(stem)}", title or stem, markdown_html(body), source))
    return sections


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _plot_kind(rel: Path) -> tuple[int, str]:
    """(group order, group title) of a plot file relative to ``plots/``."""
    if len(rel.parts) > 1:
        folder = rel.parts[0]
        return len(_KINDS) + 2, _FOLDER_KINDS.get(folder, folder.replace("_", " ").capitalize())
    for i, (title, pattern) in enumerate(_KINDS):
        if pattern.search(rel.stem):
            return i, title
    return len(_KINDS), "Other plots"


def _images(store: ResultStore) -> list[tuple[str, list[Image]]]:
    """Every figure under ``plots/`` as [(kind, [Image, ...]), ...] in page order."""
    plots = store.plots_dir
    figures: dict[Path, list[Path]] = {}
    for path in sorted(plots.rglob("*")):  # none when plots/ is absent
        if path.suffix in _MIME and path.is_file() and not path.name.startswith("."):
            figures.setdefault(path.with_suffix(""), []).append(path)
    groups: dict[tuple[int, str], list[Image]] = {}
    for stem, paths in figures.items():
        shown = min(paths, key=lambda p: _PREFERRED.index(p.suffix))
        try:
            data = base64.b64encode(shown.read_bytes()).decode("ascii")
        except OSError as exc:
            logger.warning("%s: not embedded in %s (%s)", shown, REPORT_NAME, exc)
            continue
        rel = stem.relative_to(plots)
        kind = _plot_kind(rel)
        files = tuple(p.relative_to(store.root).as_posix() for p in paths)
        groups.setdefault(kind, []).append(
            Image(kind[1], rel.as_posix().replace("_", " "), files, f"data:{_MIME[shown.suffix]};base64,{data}")
        )
    return [(kind[1], groups[kind]) for kind in sorted(groups)]


def _tail(text: str, lines: int = _TRACEBACK_LINES) -> str:
    kept = text.rstrip().splitlines()
    return "\n".join((["…"] if len(kept) > lines else []) + kept[-lines:])


def _failures(store: ResultStore, records: Sequence[CellRecord]) -> list[dict[str, Any]]:
    """Failed cells with their full error message and traceback tail."""
    summary = failures_frame(records).set_index("key")
    rows = []
    for r in records:
        if r.ok:
            continue
        error = r.error if r.error is not None else RecordError()
        more = error.model_extra or {}  # traceback (or traceback_file), attempts
        traceback = more.get("traceback") or ""
        if not traceback and more.get("traceback_file"):
            try:
                traceback = (store.root / str(more["traceback_file"])).read_text(encoding="utf-8", errors="replace")
            except OSError:
                traceback = ""
        rows.append({
            "label": str(r.label or r.key),
            "key": r.key,
            "params": summary.loc[r.key, "params"] if r.key in summary.index else "",
            "status": str(r.status),
            "kind": error.kind or "",
            "type": error.type or "unknown error",
            "message": str(error.message or ""),
            "attempts": more.get("attempts"),
            "traceback": _tail(str(traceback)) if traceback else "",
            "finished_at": r.finished_at or "",
        })
    return rows


def _flatten(obj: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}.")
        elif value is None or value == [] or value == "":
            continue
        elif isinstance(value, list):
            yield name, ", ".join(str(v) for v in value)
        else:
            yield name, str(value)


def _environment(records: Sequence[CellRecord]) -> list[tuple[str, list[tuple[str, int]]]]:
    """[(field, [(value, number of cells), ...]), ...] over the records' ``environment``
    (nested fields dotted, e.g. ``packages.torch``), in first-seen order."""
    seen: dict[str, Counter[str]] = {}
    for r in records:
        if isinstance(r.environment, dict):
            for name, value in _flatten(r.environment):
                seen.setdefault(name, Counter())[value] += 1
    return [(name, counts.most_common()) for name, counts in seen.items()]


def _suites(store: ResultStore, suite_text: str | None) -> list[tuple[str, str]]:
    """[(name, YAML text), ...]: the saved suite files, and ``suite_text`` first when it is
    not one of them."""
    suites = []
    for path in store.suite_files():
        try:
            suites.append((path.relative_to(store.root).as_posix(), path.read_text(encoding="utf-8", errors="replace")))
        except OSError as exc:
            logger.warning("%s: not shown in %s (%s)", path, REPORT_NAME, exc)
    if suite_text and all(text != suite_text for _, text in suites):
        suites.insert(0, ("suite", suite_text))
    return suites


def _stand_ins(records: Sequence[CellRecord]) -> list[dict[str, Any]]:
    """The distinct stand-in descriptions of the records (``harness run --stand-in``: the
    records' extra field ``stand_in``)."""
    found = ((r.model_extra or {}).get("stand_in") for r in records)
    found = (s for s in found if isinstance(s, dict))
    return list({json.dumps(s, sort_keys=True): s for s in found}.values())


def _harness_version() -> str:
    try:
        return version("ptq-harness")
    except PackageNotFoundError:
        return "?"


# --------------------------------------------------------------------------- page

def render_html_report(store: ResultStore, *, title: str | None = None, suite_text: str | None = None) -> str:
    """The page's HTML (see the module docstring); ``title`` defaults to the folder name."""
    from jinja2 import Environment, FileSystemLoader

    records = store.records()
    ok = sum(r.ok for r in records)
    finished = sorted(str(r.finished_at) for r in records if r.finished_at)
    plots = _images(store)
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )
    return env.get_template(_TEMPLATE).render(
        title=title or store.root.name or "Results",
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        harness_version=_harness_version(),
        results_dir=store.root.name,
        suite_names=sorted({str(r.suite) for r in records if r.suite}),
        n_ok=ok,
        n_failed=len(records) - ok,
        finished=(finished[0], finished[-1]) if finished else None,
        tables=_table_sections(store, records),
        plots=plots,
        n_plots=sum(len(images) for _, images in plots),
        failures=_failures(store, records),
        evaluation_errors=evaluation_errors_frame(records).to_dict("records"),
        suites=_suites(store, suite_text),
        stand_ins=_stand_ins(records),
        environment=_environment(records),
        n_environment=sum(isinstance(r.environment, dict) for r in records),
    )


def write_html_report(store: ResultStore, *, title: str | None = None, suite_text: str | None = None) -> Path:
    """Write ``<store.root>/report.html`` atomically and return its path.

    Call it after the tables and plots are written (:func:`harness.report.write_report` does,
    last): it embeds what exists under ``tables/`` and ``plots/`` at that moment. ``suite_text``
    (a suite's YAML) is shown besides the saved ``suites/*.yaml``.
    """
    return atomic_write_text(store.root / REPORT_NAME, render_html_report(store, title=title, suite_text=suite_text))
