"""Zero-shot accuracy through lm-eval's Python API, on the in-memory (quantized) model.

The model object is wrapped in lm-eval's `HFLM` as it is, packed layers included: nothing is
exported or loaded a second time. Each task runs 0-shot through lm-eval's evaluation loop
(`lm_eval.evaluator.evaluate`, the one `simple_evaluate` calls, without its reseeding of the
global RNGs) and yields `acc`, `acc_norm` (where the task has it) and their standard errors,
the task's version and its sample count.

Tasks: the offline pack (`harness.tasks`: `embedded_lastword`, `embedded_cloze4`) needs no
network. Any other name is one of lm-eval's own tasks, whose dataset comes from the Hugging
Face Hub: when the hub cannot be reached (offline mode set, or no answer to a 3 s probe),
only the local `datasets` cache is read, so a missing dataset fails in seconds with a
message that names the task, the dataset and the fix. A task that fails is recorded with
its error; the other tasks still run.

With `cache_dir`, each task's result is written to `<cache_dir>/<task>.json` and reused
while the limit, the lm-eval version and (for pack tasks) the task files are unchanged.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from harness.errors import HarnessError
from harness.metrics.results import TaskResult, ZeroShotResult
from harness.models.hub import hub_offline, offline_mode, offline_requested
from harness.tasks import PACK_DIR, PACK_TASKS, PAPER_TASKS, data_path  # noqa: F401 (PAPER_TASKS: re-exported)

logger = logging.getLogger(__name__)

#: Folders of lm-eval's task tree that define the protocol's tasks (`PAPER_TASKS`): indexing only
#: these takes milliseconds instead of the ~10 s of the whole tree (which stays the fallback).
_BUILTIN_FOLDERS = {
    "winogrande": "winogrande", "piqa": "piqa", "hellaswag": "hellaswag",
    "arc_easy": "arc", "arc_challenge": "arc", "boolq": "super_glue/boolq",
}
METRICS = ("acc", "acc_norm")
CACHE_FORMAT = 1
#: lm-eval's default few-shot seed (unused at 0 shots; set so that a task behaves as under `simple_evaluate`).
_FEWSHOT_SEED = 1234


class ZeroShotTaskError(HarnessError):
    """One zero-shot task could not be loaded or evaluated."""


def lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        import lm_eval

        return str(getattr(lm_eval, "__version__", "unknown"))


@lru_cache(maxsize=None)
def pack_fingerprint(task: str) -> str | None:
    """sha256 of a pack task's YAML and data file (None for lm-eval's own tasks)."""
    if task not in PACK_TASKS:
        return None
    digest = hashlib.sha256()
    for path in (PACK_DIR / f"{task}.yaml", data_path(task)):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- task loading

def task_manager(tasks: list[str], *, announce: bool = True) -> Any:
    """An lm-eval TaskManager that knows the offline pack and the named built-in tasks.

    Only the pack is indexed when every task is a pack task; the folders of the paper tasks
    when all others are paper tasks; else the whole lm-eval task tree (~10 s on 2 cores).
    """
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    builtin = [t for t in tasks if t not in PACK_TASKS]
    if not builtin:
        return TaskManager(include_path=str(PACK_DIR), include_defaults=False)
    if all(t in _BUILTIN_FOLDERS for t in builtin):
        root = Path(lm_eval.tasks.__file__).parent
        folders = sorted({root / _BUILTIN_FOLDERS[t] for t in builtin})
        if all(f.is_dir() for f in folders):  # lm-eval's layout as expected: index only those folders
            manager = TaskManager(include_path=[*map(str, folders), str(PACK_DIR)], include_defaults=False)
            if all(t in manager.all_tasks for t in builtin):
                return manager
    if announce:
        logger.info("indexing lm-eval's task tree (about 10 s)")
    return TaskManager(include_path=str(PACK_DIR))


def unknown_tasks(tasks: list[str]) -> dict[str, list[str]]:
    """The names among `tasks` that are neither pack tasks nor in lm-eval's task index, each with
    up to three close known names. Offline: lm-eval's index is read from its installed task
    files (no hub access); only names outside the pack and the protocol's tasks cost the ~10 s
    of indexing the whole tree."""
    manager = task_manager(list(tasks), announce=False)
    known = set(manager.all_tasks) | set(PACK_TASKS)
    return {
        t: difflib.get_close_matches(t, sorted(known), n=3)
        for t in tasks if t not in known
    }


def _load_error(task: str, manager: Any, offline: bool, exc: Exception) -> ZeroShotTaskError:
    """A one-paragraph message: which task, why, and what to do."""
    entry = manager.task_index.get(task)
    if entry is None:
        close = difflib.get_close_matches(task, manager.all_tasks, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return ZeroShotTaskError(
            f"unknown zero-shot task '{task}': it is neither in the offline pack ({', '.join(PACK_TASKS)}) nor "
            f"one of lm-eval's tasks.{hint} List lm-eval's tasks with `lm-eval ls tasks`."
        )
    dataset = (entry.cfg or {}).get("dataset_path") or "its dataset"
    name = (entry.cfg or {}).get("dataset_name")
    what = f"{dataset}" + (f" ({name})" if name else "")
    if offline:
        why = "offline mode is set (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)" if offline_requested() else "it did not answer"
        return ZeroShotTaskError(
            f"zero-shot task '{task}' needs the dataset {what}, which is not in the local datasets cache, and the "
            f"Hugging Face Hub cannot be reached: {why}. Use the offline tasks "
            f"{' and '.join(PACK_TASKS)} instead, or download it once where the hub is reachable "
            f"(`python -c \"import datasets; datasets.load_dataset('{dataset}'"
            + (f", '{name}'" if name else "")
            + ")\"`) and run with HF_DATASETS_OFFLINE=1 to read the cache."
        )
    return ZeroShotTaskError(
        f"zero-shot task '{task}' could not be loaded ({type(exc).__name__}: {str(exc).strip()[:300]}). "
        f"Check the task name and that its dataset {what} can be downloaded, or use the offline tasks "
        f"{' and '.join(PACK_TASKS)}."
    )


# --------------------------------------------------------------------------- cache

def _cache_path(cache_dir: Path, task: str) -> Path:
    return Path(cache_dir) / f"{task}.json"


def _read_cache(cache_dir: Path | None, task: str, limit: int | float | None, version: str) -> TaskResult | None:
    if cache_dir is None:
        return None
    path = _cache_path(cache_dir, task)
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable zero-shot cache entry (%s); evaluating again", path, exc)
        return None
    key = {"format": CACHE_FORMAT, "limit": limit, "lm_eval_version": version, "fingerprint": pack_fingerprint(task)}
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    try:
        result = TaskResult(**stored["result"])
    except (KeyError, TypeError):
        return None
    result.cached = True
    return result


def _write_cache(cache_dir: Path | None, result: TaskResult, limit: int | float | None, version: str) -> None:
    if cache_dir is None or result.error is not None:
        return
    from harness.store import atomic_write_json

    key = {"format": CACHE_FORMAT, "limit": limit, "lm_eval_version": version, "fingerprint": pack_fingerprint(result.task)}
    atomic_write_json(_cache_path(cache_dir, result.task), {"key": key, "result": result.to_dict()})


# --------------------------------------------------------------------------- evaluation

def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" for a missing stderr
        return None


def _metric(values: dict[str, Any], name: str) -> float | None:
    """lm-eval's `"<metric>,<filter>"` keys: the `none` filter, else the first one."""
    if f"{name},none" in values:
        return _number(values[f"{name},none"])
    for key, value in values.items():
        if key.split(",")[0] == name:
            return _number(value)
    return None


class _DropPackNotice(logging.Filter):
    """Hide lm-eval's advice on `--metadata`, logged for every task with its own dataset loader."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


def _run_task(lm: Any, manager: Any, task: str, *, limit: int | float | None, batch_size: int) -> TaskResult:
    """Load and evaluate one task; raises ZeroShotTaskError for a task that cannot be loaded."""
    from lm_eval import evaluator

    offline = task not in PACK_TASKS and hub_offline()
    with offline_mode(offline):
        try:
            loaded = manager.load([task])
        except Exception as exc:
            raise _load_error(task, manager, offline, exc) from exc
        if task not in loaded["groups"] and list(loaded["tasks"]) != [task]:
            raise ZeroShotTaskError(
                f"zero-shot task '{task}' is an lm-eval tag of several tasks ({', '.join(sorted(loaded['tasks']))}); "
                f"list the tasks one by one in `evaluations.zero_shot.tasks`."
            )
        for obj in loaded["tasks"].values():  # the protocol: 0-shot, whatever a task's YAML says
            obj.set_config(key="num_fewshot", value=0)
            obj.set_fewshot_seed(seed=_FEWSHOT_SEED)
        start = time.perf_counter()
        # lm-eval's core loop, as `simple_evaluate` calls it, without the latter's extras: it reseeds
        # the global random / numpy / torch generators and collects environment facts (~1.5 s per call
        # on 2 cores, through subprocesses) that the record already has.
        out = evaluator.evaluate(lm=lm, task_dict=loaded, limit=limit, log_samples=False)
    values = out["results"][task]
    samples = (out.get("n-samples") or {}).get(task) or {}
    return TaskResult(
        task=task,
        acc=_metric(values, "acc"),
        acc_stderr=_metric(values, "acc_stderr"),
        acc_norm=_metric(values, "acc_norm"),
        acc_norm_stderr=_metric(values, "acc_norm_stderr"),
        samples=samples.get("effective"),
        version=(out.get("versions") or {}).get(task),
        fingerprint=pack_fingerprint(task),
        seconds=round(time.perf_counter() - start, 3),
        batch_size=batch_size,
        limit=limit,
    )


def _run_tasks(
    lm: Any, manager: Any, tasks: list[str], results: dict[str, TaskResult], *,
    limit: int | float | None, batch_size: int, cache_dir: Path | None, version: str,
) -> None:
    """Evaluate `tasks` one by one into `results`; a failing task gets its error, the rest go on."""
    for task in tasks:
        try:
            result = _run_task(lm, manager, task, limit=limit, batch_size=batch_size)
        except Exception as exc:
            error = exc if isinstance(exc, ZeroShotTaskError) else ZeroShotTaskError(
                f"zero-shot task '{task}' failed during evaluation ({type(exc).__name__}: {exc})."
            )
            logger.error("zero-shot %s: %s", task, error)
            results[task] = TaskResult(task=task, limit=limit, batch_size=batch_size,
                                       error={"type": type(error).__name__, "message": str(error)})
            continue
        results[task] = result
        _write_cache(cache_dir, result, limit, version)
        logger.info("zero-shot %s: acc %.4f%s (%s examples, %.1f s)", task, result.acc or math.nan,
                    f", acc_norm {result.acc_norm:.4f}" if result.acc_norm is not None else "",
                    result.samples, result.seconds)


def evaluate_zero_shot(
    model: nn.Module,
    tokenizer: Any,
    tasks: list[str],
    *,
    batch_size: int = 8,
    limit: int | float | None = None,
    cache_dir: Path | None = None,
) -> ZeroShotResult:
    """0-shot accuracy of `model` (any `*ForCausalLM`, packed layers included) on `tasks`.

    limit: at most this many examples per task (the first ones of the task's split), or a
      fraction of them when below 1 (lm-eval's meaning).
    cache_dir: per-task results are read from and written to `<cache_dir>/<task>.json`.
    A task that cannot be loaded or evaluated gets an `error` (type, message); the others run.
    """
    from lm_eval.models.huggingface import HFLM

    start = time.perf_counter()
    version = lm_eval_version()
    names = list(dict.fromkeys(tasks))
    results: dict[str, TaskResult] = {}
    for task in names:
        cached = _read_cache(cache_dir, task, limit, version)
        if cached is not None:
            logger.info("zero-shot %s: cached result (acc %s)", task, cached.acc)
            results[task] = cached
    todo = [task for task in names if task not in results]
    if todo:
        manager = task_manager(todo)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        notice = _DropPackNotice()
        logging.getLogger("lm_eval.api.task").addFilter(notice)
        try:
            _run_tasks(lm, manager, todo, results, limit=limit, batch_size=batch_size, cache_dir=cache_dir,
                       version=version)
        finally:
            logging.getLogger("lm_eval.api.task").removeFilter(notice)
    ordered = {task: results[task] for task in names}
    return ZeroShotResult(
        tasks=ordered,
        limit=limit,
        batch_size=batch_size,
        lm_eval_version=version,
        seconds=time.perf_counter() - start,
        errors=[t for t, r in ordered.items() if r.error is not None],
    )
