"""report.html: one self-contained page (tables, embedded plots, failures, suite, environment),
checked as a file and as rendered by headless Chromium (skipped where no Chromium is installed)."""
from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.report import write_report
from harness.report.html import write_html_report
from harness.store import ResultStore

SCRIPT = "<script>alert('x')</script>"
SUITE_YAML = "name: demo  # naïve <b>bold</b> & co\nmodels: [tiny]\nmethods:\n  - name: rtn\n    budgets: [4, 3, 2]\n"
RTN_BITS = {4: 4.25, 3: 3.25, 2: 2.25}
BROWSERS = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome")


def _env(torch: str) -> dict:
    return {"python": "3.11.7", "packages": {"torch": torch, "transformers": "5.23.0", "ray": None},
            "git_commit": "abc123", "device": "cpu (x86_64, 2 threads)", "devices": ["cpu"]}


def _ok(key: str, method: str, budget: int | None, bits: float, ppl: float, *, torch: str = "2.13.0+cpu",
        zero_shot: dict | None = None) -> dict:
    metrics = {"bits": bits, "bits_paper": bits, "model_bits": bits + 0.5, "size_bytes": int(bits * 1e6),
               "perplexity": {"embedded": {"ppl": ppl, "seqlen": 64, "windows": 4, "tokens": 256}}}
    if zero_shot is not None:
        metrics["zero_shot"] = zero_shot
    return {"key": key, "label": f"tiny/{method}" + (f"/b{budget}" if budget else ""), "suite": "demo",
            "model": {"label": "tiny", "id": "x"}, "method": method, "method_label": method, "budget": budget,
            "params": {"bits": budget} if budget else {}, "reference": method == "none", "status": "ok",
            "metrics": metrics, "timings": {"quantize_s": 1.5, "total_s": 3.0}, "environment": _env(torch),
            "finished_at": f"2026-01-0{budget or 1}T00:00:00+00:00"}


def _failed(key: str) -> dict:
    return {"key": key, "label": "tiny/boom", "suite": "demo", "model": {"label": "tiny", "id": "x"},
            "method": "boom", "method_label": "boom", "budget": None, "params": {}, "status": "failed",
            "error": {"type": "RuntimeError", "kind": "exception", "message": f"bad layer {SCRIPT} & more",
                      "traceback": "Traceback (most recent call last):\n  File \"x.py\"\nRuntimeError: bad layer"},
            "environment": _env("2.12.0+cpu"), "finished_at": "2026-01-09T00:00:00+00:00"}


def _records() -> list[dict]:
    failed_task = {"tasks": {"hellaswag_local": {"error": {"type": "OSError", "message": "no file <x.jsonl>"}}},
                   "errors": ["hellaswag_local"]}
    records = [_ok("ref", "none", None, 16.0, 12.0)]
    records[0]["stand_in"] = {"name": "embedded", "suite": "demo", "description": "small <stand-in>",
                              "substitutions": ["models: llama2-7b -> smollm2-135m"]}
    records += [_ok(f"rtn{b}", "rtn", b, RTN_BITS[b], 12.0 + 10 / b, zero_shot=failed_task if b == 2 else None)
                for b in (4, 3, 2)]
    return records + [_failed("boom")]


def _store(root: Path, records: list[dict]) -> ResultStore:
    store = ResultStore(root)
    for r in records:
        store.put(r)
    return store


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A store with 4 finished cells and 1 failed one, its suite file, two extra tables and an
    SVG-only figure, reported by write_report (real PNG/SVG plots)."""
    root = tmp_path_factory.mktemp("results")
    store = _store(root, _records())
    store.save_suite("demo", SUITE_YAML)
    (store.tables_dir).mkdir(parents=True)
    (store.tables_dir / "compare_demo.md").write_text(
        "# Paired comparison\n\n| pair | Δ ppl |\n|:--|--:|\n| rtn b3 vs b4 | 1.67 |\n| rtn b2 vs b4 | 2.50 |\n")
    (store.tables_dir / "zz_extra.csv").write_text("method,value\nrtn,1.5\nnone,2\n")
    write_report(store)  # writes results.md, PNG + SVG plots, then report.html
    svg = next(store.plots_dir.glob("*.svg"))
    (store.plots_dir / "inspect").mkdir()
    shutil.copy(svg, store.plots_dir / "inspect" / "layer_errors.svg")  # a figure that exists only as SVG
    return write_html_report(store, title="demo <results>")


def _figures(root: Path) -> set[Path]:
    return {p.with_suffix("") for p in (root / "plots").rglob("*") if p.suffix in (".png", ".svg")}


class _Balance(HTMLParser):
    """Checks that every non-void element is closed in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


# --------------------------------------------------------------------------- the file

def test_report_file_is_self_contained_and_escaped(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
    assert "<script" not in text.lower()  # the page runs nothing, and record text cannot inject a script
    assert "bad layer &lt;script&gt;alert(" in text
    assert "demo &lt;results&gt;" in text and "naïve &lt;b&gt;bold&lt;/b&gt; &amp; co" in text
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", text)
    assert refs and all(r.startswith(("#", "data:image/png;base64,", "data:image/svg+xml;base64,")) for r in refs)
    assert not re.search(r"url\(|@import|https?://", text.replace("http://www.w3.org", ""))
    checker = _Balance()
    checker.feed(text)
    assert not checker.errors and checker.stack == [], (checker.errors, checker.stack)

    # one embedded image per figure: the PNG where there is one (byte for byte), else the SVG
    root = report.parent
    srcs = re.findall(r'<img src="data:([^;]+);base64,([^"]+)"', text)
    assert len(srcs) == len(_figures(root)) >= 2
    embedded = {base64.b64decode(data) for _, data in srcs}
    for figure in _figures(root):
        shown = figure.with_suffix(".png") if figure.with_suffix(".png").exists() else figure.with_suffix(".svg")
        assert shown.read_bytes() in embedded
    assert [m for m, _ in srcs].count("image/svg+xml") == 1


def test_report_sections(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    sections = re.findall(r'<section id="([^"]+)"', text)
    assert sections[:3] == ["results", "table-compare-demo", "table-zz-extra"]  # compare first, CSV-only shown
    assert sections[3:] == ["plots", "failures", "suite", "environment"]
    assert "Layer diagnostics" in text and "Perplexity vs bits per weight" in text
    assert "4 finished cells" in text and "1 failed cell<" in text and "1 failed evaluation<" in text
    assert "no file &lt;x.jsonl&gt;" in text and "hellaswag_local" in text
    assert "Traceback (most recent call last)" in text
    # environment deduplicated: one row per field, both torch versions with their cell counts
    assert text.count("<th scope=\"row\">packages.torch</th>") == 1
    assert "2.13.0+cpu (4 cells)" in text and "2.12.0+cpu (1 cell)" in text
    assert "packages.ray" not in text  # empty values are left out
    assert "Stand-in run: embedded" in text and "small &lt;stand-in&gt;" in text and "llama2-7b -&gt; smollm2-135m" in text


@pytest.mark.parametrize("kind", ["empty", "only_failures"])
def test_report_of_empty_or_failed_store(tmp_path: Path, kind: str) -> None:
    store = _store(tmp_path, [] if kind == "empty" else [_failed("boom")])
    paths = write_report(store)
    assert paths[-1] == tmp_path / "report.html"
    text = paths[-1].read_text(encoding="utf-8")
    assert "0 finished cells" in text and "No finished cells." in text and "No plots" in text
    assert ("1 failed cell<" in text and "bad layer" in text) if kind == "only_failures" else "No failed cells." in text
    assert "<img" not in text and "<script" not in text


def test_report_html_can_be_disabled(tmp_path: Path) -> None:
    store = _store(tmp_path, _records()[:1])
    assert all(p.name != "report.html" for p in write_report(store, plots=(), html=False))
    assert not (tmp_path / "report.html").exists()
    from harness.cli import app

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # the CLI callback configures logging
    try:
        result = CliRunner().invoke(app, ["report", str(tmp_path), "--no-html"])
        assert result.exit_code == 0 and not (tmp_path / "report.html").exists()
        result = CliRunner().invoke(app, ["report", str(tmp_path)])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert result.exit_code == 0 and "report.html" in result.output and (tmp_path / "report.html").is_file()


def test_saved_suites_one_file_per_name(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.save_suite("demo", "name: demo\n")
    store.save_suite("demo", "name: demo  # edited\n")  # the same suite again: replaced
    store.save_suite("../other suite", "name: other\n")  # never escapes suites/
    assert [p.name for p in store.suite_files()] == ["demo.yaml", "other_suite.yaml"]
    assert (tmp_path / "suites" / "demo.yaml").read_text() == "name: demo  # edited\n"
    text = write_html_report(store).read_text(encoding="utf-8")
    assert "suites/demo.yaml" in text and "suites/other_suite.yaml" in text and "# edited" in text
    text = write_html_report(store, suite_text="name: other\n").read_text(encoding="utf-8")
    assert text.count("name: other") == 1  # a given suite text that equals a saved file is shown once
    assert "<code>suite</code>" in write_html_report(store, suite_text="name: new\n").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the rendered page

#: Appended to a copy of the report: after load, writes what the browser rendered into the DOM.
PROBE = """<script>
window.addEventListener("load", () => {
  const text = (el) => el.textContent.trim();
  const tables = {};
  for (const section of document.querySelectorAll("section.table-section")) {
    const table = section.querySelector("table");
    const head = [...table.querySelectorAll("thead th")].map(text);
    const rows = [...table.querySelectorAll("tbody tr")].map((tr) => [...tr.children].map(text));
    const align = [...table.querySelectorAll("tbody tr:first-child td")].map((td) => getComputedStyle(td).textAlign);
    tables[section.id] = {head, rows, align, height: table.getBoundingClientRect().height};
  }
  const images = [...document.images].map((img) => ({
    alt: img.alt, complete: img.complete, natural: img.naturalWidth, shown: img.getBoundingClientRect().width}));
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    charset: document.characterSet, scripts: document.scripts.length, tables, images,
    failures: [...document.querySelectorAll(".failure .message")].map(text),
    suite: [...document.querySelectorAll("#suite pre")].map(text),
    environment: document.querySelectorAll("#environment-table tbody tr").length,
  });
  document.body.appendChild(probe);
});
</script>
"""


def _chromium() -> str | None:
    found = os.environ.get("HARNESS_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    return found


def _render(browser: str, page: Path, profile: Path) -> dict:
    """The probe's JSON from the DOM that headless Chromium dumps after loading ``page``
    (network switched off: anything the page tried to fetch would fail)."""
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
        "--dump-dom", page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, flags=re.DOTALL)
    assert match, f"no probe output from {browser} (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html.unescape(match.group(1)))


def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip(f"no Chromium on PATH (looked for {', '.join(BROWSERS)}; or set HARNESS_CHROMIUM): "
                    "install it with `apt-get install chromium` (.ci/run does) to render report.html")
    page = report.with_name("probe.html")
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _render(browser, page, tmp_path / "profile")

    assert dom["charset"] == "UTF-8" and dom["scripts"] == 1  # only the probe: record text stayed text
    results = dom["tables"]["results"]
    assert results["height"] > 0
    method = results["head"].index("method")
    assert [row[method] for row in results["rows"]] == ["none", "rtn", "rtn", "rtn"]  # the 4 finished cells
    bits = results["head"].index("bits")
    assert [row[bits] for row in results["rows"]] == ["16.000", "4.250", "3.250", "2.250"]
    assert results["align"][bits] == "right" and results["align"][method] == "left"
    assert dom["tables"]["table-compare-demo"]["rows"] == [["rtn b3 vs b4", "1.67"], ["rtn b2 vs b4", "2.50"]]
    assert dom["tables"]["table-zz-extra"]["rows"] == [["rtn", "1.5"], ["none", "2"]]

    images = dom["images"]
    assert len(images) == len(_figures(report.parent)) >= 2
    undecoded = [i["alt"] for i in images if not (i["complete"] and i["natural"] > 0 and i["shown"] > 0)]
    assert not undecoded, f"images not decoded or not shown: {undecoded}"
    assert any(i["alt"].startswith("Layer diagnostics") for i in images)  # the SVG-only figure decoded too

    assert dom["failures"] == [f"bad layer {SCRIPT} & more"]
    assert "naïve <b>bold</b> & co" in dom["suite"][0]
    assert dom["environment"] >= 5
