"""The Ray executor: each cell is a Ray task that asks for the suite's CPUs, GPUs and memory.

The task runs the same worker subprocess as the local executor (``run_attempt``), so the
results folder must be on a filesystem every node sees (and ptq-harness installed on every
node). ``executor.address`` connects to a running cluster (``auto``, ``host:port`` or a
``ray://`` client address); without it a local Ray instance is started for the run and shut
down after it. A task whose Ray worker or node dies is retried by the shared driver loop, not
by Ray (``max_retries=0`` on the task), so every executor retries the same way.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.executors.attempt import AttemptResult, run_attempt
from harness.store import ResultStore
from harness.suite import Cell, ExecutorSpec

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'ptq-harness[scale]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise HarnessError(
            f"`executor: ray` needs the `ray` package, which is not installed: {INSTALL_HINT} "
            f"(or `pip install ray`), or use `executor: local`."
        ) from exc
    return ray


def gpus_per_cell(spec: ExecutorSpec, device: str, cluster_gpus: float) -> float:
    """The GPUs each task asks for: ``executor.num_gpus``, else 1 for ``device: cuda`` (and
    for ``device: auto`` on a cluster with GPUs), else 0."""
    if spec.num_gpus is not None:
        return spec.num_gpus
    return 1.0 if device == "cuda" or (device == "auto" and cluster_gpus > 0) else 0.0


class RayBackend:
    """Ray tasks; handles are ``ObjectRef``s of ``run_attempt``'s result."""

    name = "ray"

    def __init__(
        self, spec: ExecutorSpec, store: ResultStore, *, device: str, timeout_s: float | None, base_dir: Path | None
    ) -> None:
        self._ray = import_ray()
        self._owns_cluster = False
        if not self._ray.is_initialized():
            self._connect(spec.address)
        resources = self._ray.cluster_resources()
        options: dict[str, Any] = {
            "num_cpus": spec.num_cpus if spec.num_cpus is not None else 1.0,
            "num_gpus": gpus_per_cell(spec, device, resources.get("GPU", 0.0)),
            "max_retries": 0,
        }
        if spec.memory_gb is not None:
            options["memory"] = int(spec.memory_gb * 2**30)
        where = spec.address or "the local Ray instance"
        self._check_resources(options, resources, where)
        self._task = self._ray.remote(run_attempt).options(**options)
        self._attempt_args = {
            "results_dir": str(store.root.resolve()), "progress": False, "timeout_s": timeout_s,
            "base_dir": str(base_dir) if base_dir is not None else None, "cwd": os.getcwd(),
        }
        asks = ", ".join(f"{k}={v}" for k, v in options.items() if k != "max_retries")
        logger.info("ray: %s, each cell asks for %s", where, asks)

    def _connect(self, address: str | None) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no telemetry unless the user opts in
        if address is None:
            self._ray.init(include_dashboard=False, logging_level=logging.WARNING)
            self._owns_cluster = True
            return
        _check_reachable(address)
        try:
            self._ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            raise HarnessError(
                f"executor.address: cannot connect to a Ray cluster at '{address}' ({_first_line(exc)}). Start "
                f"one with `ray start --head`, fix the address, or remove `address` to start a local instance."
            ) from exc

    def _check_resources(self, options: dict[str, Any], resources: dict[str, float], where: str) -> None:
        """A cell asking for more than the whole cluster has would wait forever: an error for the
        local instance, a warning for a cluster (an autoscaler may add nodes)."""
        for name, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            asked, have = options[name], resources.get(resource, 0.0)
            if asked <= have:
                continue
            message = (
                f"executor.{name}: each cell asks for {asked:g} but {where} has {have:g} in all; "
                f"lower `executor.{name}` or connect to a larger cluster with `executor.address`."
            )
            if self._owns_cluster:
                self.close(cancel=True)
                raise HarnessError(message)
            logger.warning("%s (tasks wait until an autoscaler adds nodes)", message)

    def submit(self, cell: Cell, attempt: int) -> Any:
        return self._task.remote(cell.model_dump(mode="json"), executor="ray", attempt=attempt, **self._attempt_args)

    def wait(self, handles: list[Any], timeout_s: float) -> list[Any]:
        ready, rest = self._ray.wait(handles, num_returns=1, timeout=timeout_s)
        if ready and rest:
            more, _ = self._ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return ready

    def result(self, handle: Any) -> AttemptResult:
        ray = self._ray
        try:
            return ray.get(handle)
        except ray.exceptions.OutOfMemoryError as exc:
            return AttemptResult(False, f"Ray killed the task for lack of memory: {_first_line(exc)}", "oom")
        except ray.exceptions.RayError as exc:  # worker crashed, node died, task raised, ...
            return AttemptResult(False, f"Ray task lost ({type(exc).__name__}): {_first_line(exc)}")

    def close(self, cancel: bool) -> None:
        if self._owns_cluster and self._ray.is_initialized():
            self._ray.shutdown()  # stops the local instance and every task still running
            self._owns_cluster = False


def _check_reachable(address: str) -> None:
    """Fail fast on a ``host:port`` (or ``ray://host:port``) nobody listens on: Ray itself retries for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():  # "auto", or a form Ray resolves itself
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise HarnessError(
            f"executor.address: nothing answers at '{address}' ({exc}). Start the cluster with "
            f"`ray start --head`, fix the address, or remove `address` to start a local Ray instance."
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
