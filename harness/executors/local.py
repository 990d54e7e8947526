"""The local executor: cells one after another, each in its own subprocess.

A cell that raises is recorded as failed by its worker; a worker that dies (segfault,
out-of-memory kill, timeout) is recorded as failed here. Either way the suite goes on.
"""
from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.runner import failed_record
from harness.store import ResultStore, atomic_write_json
from harness.suite import Cell
from harness.worker import cell_spec_path

logger = logging.getLogger(__name__)


def _die_with_parent() -> None:  # runs in the child before exec (Linux only)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_cell_subprocess(
    cell: Cell, store: ResultStore, *, progress: bool, timeout_s: float | None, base_dir: Path | None
) -> dict[str, Any]:
    """Run one cell in a fresh Python process; always returns a record (ok or failed)."""
    atomic_write_json(cell_spec_path(store, cell.key), cell.model_dump(mode="json"))
    cmd = [sys.executable, "-m", "harness.worker", str(store.root), cell.key]
    if base_dir is not None:
        cmd += ["--base-dir", str(base_dir)]
    if not progress:
        cmd.append("--no-progress")
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(cmd, preexec_fn=preexec)
    try:
        returncode = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        returncode = None
    except BaseException:  # Ctrl-C: stop the child too
        proc.kill()
        proc.wait()
        raise
    record = store.get(cell.key)
    if record is not None and (returncode == 0 or record.get("status") == "failed"):
        return record
    if returncode is None:
        message = f"cell exceeded the executor timeout of {timeout_s} s and was killed"
    elif returncode < 0:
        sig = signal.Signals(-returncode).name
        hint = " (SIGKILL usually means the machine ran out of memory)" if returncode == -signal.SIGKILL else ""
        message = f"worker process was killed by {sig}{hint}"
    else:
        message = f"worker process exited with code {returncode} without writing a record"
    record = failed_record(cell, "WorkerCrash", message, _tail(store.log_path(cell.key)))
    store.put(record)
    return record


def run_local(
    cells: list[Cell],
    store: ResultStore,
    *,
    progress: bool = True,
    timeout_s: float | None = None,
    base_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Run every unfinished cell; finished cells are returned from the store untouched."""
    records = []
    for i, cell in enumerate(cells, 1):
        existing = store.get(cell.key)
        if existing is not None and existing.get("status") == "ok":
            logger.info("[%d/%d] %s: already finished, skipped", i, len(cells), cell.label)
            records.append(existing)
            continue
        logger.info("[%d/%d] %s: running (key %s)", i, len(cells), cell.label, cell.key)
        start = time.perf_counter()
        record = run_cell_subprocess(cell, store, progress=progress, timeout_s=timeout_s, base_dir=base_dir)
        status = record["status"]
        detail = record["error"]["message"] if status == "failed" else _summary(record)
        log = logger.info if status == "ok" else logger.error
        log("[%d/%d] %s: %s in %.1f s — %s", i, len(cells), cell.label, status, time.perf_counter() - start, detail)
        records.append(record)
    return records


def _summary(record: dict[str, Any]) -> str:
    metrics = record.get("metrics", {})
    parts = [f"bits {metrics.get('bits', float('nan')):.3f}"]
    for name, ppl in metrics.get("perplexity", {}).items():
        parts.append(f"ppl[{name}] {ppl['ppl']:.3f}")
    return ", ".join(parts)
