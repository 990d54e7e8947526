"""The local executor: cells one after another, each in its own subprocess.

A cell that raises is recorded as failed by its worker; a worker that dies (segfault,
out-of-memory kill) is retried up to ``max_retries`` times and then recorded as failed; a
worker past the timeout is killed and recorded. Either way the suite goes on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.executors.attempt import AttemptResult, run_attempt
from harness.executors.driver import run_with_backend
from harness.store import ResultStore
from harness.suite import Cell


class LocalBackend:
    """Runs each attempt synchronously in ``submit``; the handle is the attempt's result."""

    name = "local"

    def __init__(self, store: ResultStore, *, progress: bool, timeout_s: float | None, base_dir: Path | None) -> None:
        self._store, self._progress, self._timeout_s = store, progress, timeout_s
        self._base_dir = str(base_dir) if base_dir is not None else None

    def submit(self, cell: Cell, attempt: int) -> AttemptResult:
        return run_attempt(
            cell.model_dump(mode="json"), str(self._store.root), executor="local", attempt=attempt,
            progress=self._progress, timeout_s=self._timeout_s, base_dir=self._base_dir,
        )

    def wait(self, handles: list[AttemptResult], timeout_s: float) -> list[AttemptResult]:
        return handles

    def result(self, handle: AttemptResult) -> AttemptResult:
        return handle

    def close(self, cancel: bool) -> None:
        pass


def run_local(
    cells: list[Cell],
    store: ResultStore,
    *,
    progress: bool = True,
    timeout_s: float | None = None,
    base_dir: Path | None = None,
    max_retries: int = 1,
) -> list[dict[str, Any]]:
    """Run every unfinished cell; finished cells are returned from the store untouched."""
    backend = LocalBackend(store, progress=progress, timeout_s=timeout_s, base_dir=base_dir)
    return run_with_backend(cells, store, backend, max_retries=max_retries, max_parallel=1)
