"""The Slurm executor: each cell is a Slurm job submitted through submitit.

The job runs the same worker subprocess as the local executor (``run_attempt``), so the
results folder and ``executor.slurm_folder`` (default ``<results>/slurm``: submission
scripts, pickled calls and the jobs' stdout/stderr) must be on a filesystem the compute
nodes see, with ptq-harness installed in the same Python environment there. A job that
Slurm kills (cancelled, node failure, preempted, past ``time_min``) is retried by the shared
driver loop. ``executor.local: true`` runs the jobs as local processes through submitit's
local executor, with the same code path (for tests and for a machine without Slurm).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.executors.attempt import AttemptResult, run_attempt
from harness.store import ResultStore
from harness.suite import Cell, ExecutorSpec

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'ptq-harness[scale]'"
DEFAULT_TIME_MIN = 24 * 60  # submitit's own default (5 min for Slurm, 2 for local) kills most cells


def import_submitit() -> Any:
    try:
        import submitit
    except ImportError as exc:
        raise HarnessError(
            f"`executor: slurm` needs the `submitit` package, which is not installed: {INSTALL_HINT} "
            f"(or `pip install submitit`), or use `executor: local`."
        ) from exc
    return submitit


def slurm_folder(spec: ExecutorSpec, store: ResultStore) -> Path:
    return Path(spec.slurm_folder).expanduser() if spec.slurm_folder else store.slurm_dir


class SlurmBackend:
    """submitit jobs; handles are submitit ``Job`` objects."""

    name = "slurm"

    def __init__(
        self, spec: ExecutorSpec, store: ResultStore, *, device: str, timeout_s: float | None, base_dir: Path | None
    ) -> None:
        submitit = import_submitit()
        self._submitit = submitit
        if not spec.local and shutil.which("sbatch") is None:
            raise HarnessError(
                "`executor: slurm`: `sbatch` is not on PATH. Run harness on a Slurm login node, or set "
                "`executor.local: true` to run the jobs as local processes through submitit (for testing)."
            )
        num_gpus = spec.num_gpus if spec.num_gpus is not None else (1 if device == "cuda" else 0)
        if spec.num_gpus is None and device == "auto":
            logger.info("slurm: `device: auto` requests no GPU; set `executor.num_gpus` to run cells on GPUs")
        params: dict[str, Any] = {
            "timeout_min": spec.time_min or DEFAULT_TIME_MIN,
            "gpus_per_node": int(num_gpus),
            "cpus_per_task": int(spec.num_cpus) if spec.num_cpus is not None else None,
            "mem_gb": spec.memory_gb,
            "slurm_partition": spec.partition,
            "slurm_additional_parameters": dict(spec.slurm_parameters) or None,
        }
        cluster = "local" if spec.local else "slurm"
        self._executor = submitit.AutoExecutor(folder=slurm_folder(spec, store), cluster=cluster)
        try:
            self._executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        except (NameError, AssertionError, ValueError) as exc:  # submitit's own parameter checks
            raise HarnessError(f"executor: submitit refused the Slurm parameters: {exc}") from exc
        self._attempt_args = {
            "results_dir": str(store.root.resolve()), "progress": False, "timeout_s": timeout_s,
            "base_dir": str(base_dir) if base_dir is not None else None, "cwd": os.getcwd(),
        }
        self._jobs: set[Any] = set()
        shown = ", ".join(f"{k}={v}" for k, v in params.items() if v is not None)
        logger.info("slurm%s: jobs in %s, %s", " (submitit local)" if spec.local else "", self._executor.folder, shown)

    def submit(self, cell: Cell, attempt: int) -> Any:
        self._executor.update_parameters(name=f"harness-{cell.key}")
        job = self._executor.submit(
            run_attempt, cell.model_dump(mode="json"), executor="slurm", attempt=attempt, **self._attempt_args
        )
        self._jobs.add(job)
        logger.debug("slurm: %s is job %s", cell.label, job.job_id)
        return job

    def wait(self, handles: list[Any], timeout_s: float) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            done = [job for job in handles if job.done()]
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    def result(self, handle: Any) -> AttemptResult:
        self._jobs.discard(handle)
        utils = self._submitit.core.utils
        try:
            return handle.result()
        except utils.UncompletedJobError as exc:  # killed, cancelled, node failure, time limit
            message = f"Slurm job {handle.job_id} ended without a result ({handle.state}): {_first_line(exc)}"
            return AttemptResult(False, message)
        except utils.FailedJobError as exc:  # run_attempt itself raised on the node
            return AttemptResult(False, f"Slurm job {handle.job_id} failed: {_last_line(exc)}")

    def close(self, cancel: bool) -> None:
        if cancel:
            for job in self._jobs:
                try:
                    job.cancel(check=False)
                except Exception as exc:  # noqa: BLE001 - best effort on the way out
                    logger.warning("slurm: could not cancel job %s: %s", job.job_id, exc)
        self._jobs.clear()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
