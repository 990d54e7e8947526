"""Executors: where a suite's cells run (``executor.type`` in the suite).

``local`` runs cells one after another in subprocesses on this machine, ``ray`` submits each
as a Ray task, ``slurm`` each as a Slurm job (submitit). All write into the same results
store and skip finished cells; see ``driver.run_with_backend`` for the shared loop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.executors.driver import run_with_backend
from harness.record import CellRecord
from harness.store import ResultStore
from harness.suite import Cell, ExecutorSpec


def check_executor(spec: ExecutorSpec) -> None:
    """Fail early (HarnessError with the pip command) when the executor's package is missing."""
    if spec.type == "ray":
        from harness.executors.ray import import_ray

        import_ray()
    elif spec.type == "slurm":
        from harness.executors.slurm import import_submitit

        import_submitit()


def run_cells(
    cells: list[Cell],
    store: ResultStore,
    spec: ExecutorSpec,
    *,
    progress: bool = True,
    base_dir: Path | None = None,
) -> list[CellRecord]:
    """Run every unfinished cell with the executor ``spec`` describes; returns the records in order.

    Stale temp files of killed writers are removed first.
    """
    store.cleanup_tmp()
    if spec.type == "local" or all(store.is_finished(cell.key) for cell in cells):  # no cluster needed
        from harness.executors.local import LocalBackend

        backend: Any = LocalBackend(store, progress=progress, timeout_s=spec.timeout_s, base_dir=base_dir)
        return run_with_backend(cells, store, backend, max_retries=spec.max_retries, max_parallel=1)
    device = cells[0].device if cells else "auto"
    if spec.type == "ray":
        from harness.executors.ray import RayBackend

        backend = RayBackend(spec, store, device=device, timeout_s=spec.timeout_s, base_dir=base_dir)
    else:
        from harness.executors.slurm import SlurmBackend

        backend = SlurmBackend(spec, store, device=device, timeout_s=spec.timeout_s, base_dir=base_dir)
    return run_with_backend(cells, store, backend, max_retries=spec.max_retries, max_parallel=spec.max_parallel)
