"""The loop every executor shares: skip finished cells, submit the rest, retry worker deaths.

A backend (local, Ray, Slurm) only knows how to start one attempt of a cell somewhere and how
to wait for attempts; this loop decides what is done. A cell is done when the store holds its
record: ``ok``, or failed by the cell itself (an exception, a non-finite loss, an out-of-memory
error, a timeout). A cell whose worker died without a record (killed, OOM-killed, a Ray worker
or node lost, a Slurm job cancelled) is submitted again, up to ``max_retries`` times, and then
recorded as failed with the last cause.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Protocol

from harness.executors.attempt import AttemptResult, log_tail
from harness.record import CellRecord
from harness.runner import failed_record, record_failure
from harness.store import ResultStore
from harness.suite import Cell

logger = logging.getLogger(__name__)


class Backend(Protocol):
    """Where attempts run. Handles are opaque and hashable."""

    name: str

    def submit(self, cell: Cell, attempt: int) -> Any:
        """Start one attempt of ``cell`` (``attempt`` counts from 1); return its handle."""

    def wait(self, handles: list[Any], timeout_s: float) -> list[Any]:
        """The handles among ``handles`` that are finished, waiting at most ``timeout_s`` for one."""

    def result(self, handle: Any) -> AttemptResult:
        """The outcome of a finished attempt; a lost worker/task/job becomes ``recorded=False``."""

    def close(self, cancel: bool) -> None:
        """Release resources; with ``cancel``, stop attempts still running."""


def run_with_backend(
    cells: list[Cell],
    store: ResultStore,
    backend: Backend,
    *,
    max_retries: int = 1,
    max_parallel: int | None = None,
) -> list[CellRecord]:
    """Run every unfinished cell through ``backend``; returns the records in ``cells``' order."""
    total = len(cells)
    index = {cell.key: i for i, cell in enumerate(cells, 1)}
    todo: deque[Cell] = deque()
    for cell in cells:
        if store.is_finished(cell.key):
            logger.info("[%d/%d] %s: already finished, skipped", index[cell.key], total, cell.label)
        else:
            todo.append(cell)
    attempts: dict[str, int] = {}
    in_flight: dict[Any, tuple[Cell, float]] = {}
    verb = "running" if backend.name == "local" else f"submitted to {backend.name}"
    cancel = True
    try:
        while todo or in_flight:
            while todo and (max_parallel is None or len(in_flight) < max_parallel):
                cell = todo.popleft()
                attempts[cell.key] = attempts.get(cell.key, 0) + 1
                retry = f", attempt {attempts[cell.key]} of {max_retries + 1}" if attempts[cell.key] > 1 else ""
                logger.info("[%d/%d] %s: %s (key %s%s)", index[cell.key], total, cell.label, verb, cell.key, retry)
                in_flight[backend.submit(cell, attempts[cell.key])] = (cell, time.perf_counter())
            for handle in backend.wait(list(in_flight), timeout_s=1.0):
                cell, start = in_flight.pop(handle)
                outcome = backend.result(handle)
                if not outcome.recorded and not store.is_finished(cell.key):
                    if attempts[cell.key] <= max_retries:
                        logger.warning(
                            "[%d/%d] %s: %s; retrying (%d of %d retries)",
                            index[cell.key], total, cell.label, outcome.message, attempts[cell.key], max_retries,
                        )
                        todo.append(cell)
                        continue
                    _record_death(store, cell, outcome, attempts[cell.key])
                _log_done(store, cell, index[cell.key], total, time.perf_counter() - start)
        cancel = False
    finally:
        backend.close(cancel=cancel)
    return [store.get(cell.key) or _missing(cell) for cell in cells]


def _record_death(store: ResultStore, cell: Cell, outcome: AttemptResult, attempts: int) -> None:
    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
    record = failed_record(
        cell, "WorkerDied", f"{outcome.message} (gave up after {tries})",
        log_tail(store.log_path(cell.key)), kind=outcome.kind, attempts=attempts,
    )
    record_failure(store, record)


def _log_done(store: ResultStore, cell: Cell, i: int, total: int, seconds: float) -> None:
    """``seconds``: since the (last) submission, queueing included."""
    record = store.get(cell.key) or _missing(cell)
    if record.ok:
        took = (record.timings or {}).get("total_s", seconds)
        logger.info("[%d/%d] %s: ok in %.1f s — %s", i, total, cell.label, took, summary(record))
    else:
        message = record.error.message if record.error else "no error recorded"
        logger.error("[%d/%d] %s: failed after %.1f s — %s", i, total, cell.label, seconds, message)


def _missing(cell: Cell) -> CellRecord:
    """Stand-in when a record vanished (deleted by hand during the run)."""
    return failed_record(cell, "MissingRecord", "no record in the store after the cell finished", None)


def summary(record: CellRecord) -> str:
    """One line of a finished record's headline numbers."""
    bits = record.bits
    parts = [f"bits {bits if bits is not None else float('nan'):.3f}"]
    for name, ppl in record.perplexities.items():
        parts.append(f"ppl[{name}] {ppl.ppl if ppl.ppl is not None else float('nan'):.3f}")
    return ", ".join(parts)
