"""One attempt at one cell, on whichever machine runs it (the local process, a Ray task, a Slurm job).

The cell runs in a fresh Python process (``python -m harness.worker``) that writes its own
record, ok or failed. This function waits for it and says whether a record was written; a
worker that died without one (a signal, the OOM killer, a crash of the interpreter) is
reported back, and the executor decides whether to retry (see ``harness.executors.driver``).
"""
from __future__ import annotations

import ctypes
import logging
import platform
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.runner import failed_record, record_failure
from harness.store import ResultStore, atomic_write_json
from harness.suite import Cell

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)  # identity hash: results are handles of the local backend
class AttemptResult:
    """What became of one attempt: ``recorded`` when the store now holds the cell's outcome."""

    recorded: bool
    message: str = ""  # why no record was written (when not recorded)
    kind: str = "worker_died"  # "worker_died" or "oom" (the OOM killer was seen) when not recorded
    host: str = ""


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; runs before exec)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _oom_kills() -> int | None:
    """The OOM-kill counter of this process's cgroup (cgroup v2), or None where unreadable."""
    try:
        group = Path("/proc/self/cgroup").read_text().strip().splitlines()[-1].split("::", 1)[1]
        events = Path("/sys/fs/cgroup", group.lstrip("/"), "memory.events").read_text()
    except (OSError, IndexError):
        return None
    for line in events.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            return int(value)
    return None


def run_attempt(
    cell_json: dict[str, Any],
    results_dir: str,
    *,
    executor: str = "local",
    attempt: int = 1,
    progress: bool = False,
    timeout_s: float | None = None,
    base_dir: str | None = None,
    cwd: str | None = None,
) -> AttemptResult:
    """Run one cell in a worker subprocess that dies with this process; wait for it.

    A worker past ``timeout_s`` is killed and recorded as failed here (not retried: it would
    time out again). The store at ``results_dir`` must be visible from this machine. ``cwd``:
    the submitting process's working directory, where relative paths in the cell are read
    (used when it exists on this machine).
    """
    store = ResultStore(results_dir)
    cell = Cell.model_validate(cell_json)
    attempt_id = uuid.uuid4().hex
    atomic_write_json(store.cell_spec_path(cell.key), cell_json)
    cmd = [
        sys.executable, "-m", "harness.worker", str(store.root), cell.key,
        "--executor", executor, "--attempt", str(attempt), "--attempt-id", attempt_id,
    ]
    if base_dir is not None:
        cmd += ["--base-dir", str(base_dir)]
    if not progress:
        cmd.append("--no-progress")
    oom_before = _oom_kills()
    preexec = die_with_parent if sys.platform.startswith("linux") else None
    workdir = cwd if cwd is not None and Path(cwd).is_dir() else None
    proc = subprocess.Popen(cmd, preexec_fn=preexec, cwd=workdir)
    try:
        returncode: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        returncode = None
    except BaseException:  # Ctrl-C, or this task being cancelled: stop the worker too
        proc.kill()
        proc.wait()
        raise
    host = platform.node()
    record = store.get(cell.key)
    if record is not None and (
        record.ok or (record.executor or {}).get("attempt_id") == attempt_id
    ):
        return AttemptResult(recorded=True, host=host)
    if returncode is None:
        failure = failed_record(
            cell, "Timeout", f"cell exceeded the executor timeout of {timeout_s} s and was killed",
            log_tail(store.log_path(cell.key)), kind="timeout", attempts=attempt,
            provenance={"type": executor, "attempt": attempt, "attempt_id": attempt_id, "host": host},
        )
        record_failure(store, failure)
        return AttemptResult(recorded=True, host=host)
    oom_after = _oom_kills()
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        if oom_before is not None and oom_after is not None and oom_after > oom_before:
            return AttemptResult(False, f"worker process was killed by the OOM killer ({sig}) on {host}", "oom", host)
        hint = " (SIGKILL often means the machine ran out of memory)" if returncode == -signal.SIGKILL else ""
        return AttemptResult(False, f"worker process was killed by {sig} on {host}{hint}", host=host)
    message = f"worker process exited with code {returncode} on {host} without writing a record"
    return AttemptResult(False, message, host=host)
