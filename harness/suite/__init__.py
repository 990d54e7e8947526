"""Suite files: a typed, validated YAML schema (`harness.suite.schema`), resolved into a list
of independent cells.

A suite is models × methods (explicit `params` and/or nominal `budgets`, resolved through
each method's presets) × evaluations. Every default is written into the resolved cell, and
a cell's key is a hash of that resolved config, so a finished cell is never recomputed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.errors import HarnessError, SuiteError, UnknownMethodError
from harness.registry import BudgetError, default_label, get_method, method_config
from harness.strict import format_loc, validation_message
from harness.suite.report_spec import ComparePair, ReportSpec, SweepSpec
from harness.suite.schema import (
    EMBEDDED_MODEL_ALIAS,
    EMBEDDED_MODEL_NAMES,
    KNOWN_DATASETS,
    HUB_ID,
    CalibrationSpec,
    Cell,
    EvaluationsSpec,
    ExecutorSpec,
    FinetuneE2ESpec,
    MethodEntry,
    ModelSpec,
    PerplexitySpec,
    Suite,
    ThroughputSpec,
    ZeroShotSpec,
)
from harness.tasks import PACK_TASKS

__all__ = [
    "EMBEDDED_MODEL_ALIAS", "EMBEDDED_MODEL_NAMES", "KNOWN_DATASETS", "CalibrationSpec", "Cell", "ComparePair",
    "EvaluationsSpec", "ExecutorSpec", "FinetuneE2ESpec", "MethodEntry", "ModelSpec", "PerplexitySpec",
    "ReportSpec", "Suite", "SweepSpec", "ThroughputSpec", "ZeroShotSpec", "entry_seeds", "load_suite",
    "output_dir", "resolve_cells", "resolve_path",
]


# --------------------------------------------------------------------------- loading

def load_suite(path: str | os.PathLike, *, stand_in: str | None = None) -> Suite:
    """Read and validate a suite file (schema, methods, budgets, models, datasets), with a
    stand-in overlay applied first when given (`harness.stand_in`: a built-in name or a file)."""
    p = Path(path)
    if not p.is_file():
        raise SuiteError(f"{p}: suite file not found. Give the path of a YAML suite, e.g. suites/quickstart.yaml.")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SuiteError(f"{p}: not valid YAML ({str(exc).splitlines()[0]}). Fix the syntax at the line it names.") from exc
    if not isinstance(raw, dict):
        raise SuiteError(f"{p}: a suite must be a YAML mapping with at least `name`, `models` and `methods`.")
    if stand_in is not None:
        from harness.stand_in import apply_stand_in, load_stand_in

        raw = apply_stand_in(raw, load_stand_in(stand_in))
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError(validation_message(str(p), exc)) from exc
    _check_references(suite, p)
    return suite


def _check_dataset(name: str, where: str, suite_path: Path) -> None:
    if name in KNOWN_DATASETS or resolve_path(name, suite_path) is not None:
        return
    raise SuiteError(
        f"{suite_path}: field `{where}`: unknown dataset '{name}'. Use one of "
        f"{', '.join(KNOWN_DATASETS)}, or the path of an existing UTF-8 text file."
    )


def resolve_path(value: str, suite_path: Path) -> Path | None:
    """An existing path given relative to the working directory or to the suite file."""
    for base in (Path.cwd(), suite_path.parent):
        candidate = (base / os.path.expanduser(value)).resolve()
        if candidate.exists():
            return candidate
    return None


def _check_model(spec: ModelSpec, where: str, suite_path: Path) -> None:
    if spec.id in EMBEDDED_MODEL_NAMES or resolve_path(spec.id, suite_path) is not None:
        return
    looks_like_path = spec.id.endswith(".gguf") or spec.id.startswith((".", "/", "~"))
    if looks_like_path or not HUB_ID.match(spec.id):
        raise SuiteError(
            f"{suite_path}: field `{where}`: model '{spec.id}' is neither an embedded model "
            f"({', '.join(EMBEDDED_MODEL_NAMES)}), an existing local directory or GGUF file, nor a hub id of the "
            f"form 'org/name'. Fix the path (relative paths are read from the working directory "
            f"or the suite's folder) or use a hub id."
        )


def _check_compare(suite: Suite, path: Path) -> None:
    """`report.compare` names methods of the suite (by label or name), two different ones."""
    names = {label for e in suite.methods for label in _line_labels(e)} | {e.name for e in suite.methods}
    for i, pair in enumerate(suite.report.compare):
        for side in ("base", "against"):
            if getattr(pair, side) not in names:
                raise SuiteError(
                    f"{path}: field `report.compare[{i}].{side}`: '{getattr(pair, side)}' is not a method of this "
                    f"suite; use one of {', '.join(sorted(names))}."
                )
        if pair.base == pair.against:
            raise SuiteError(f"{path}: field `report.compare[{i}]`: base and against are both '{pair.base}'; name two methods.")


def _line_labels(entry: MethodEntry) -> set[str]:
    """The method labels a line's cells get: its `label`, else the method's default label of each
    resolved config (e.g. `aqlm-harness`); the bare name when its params do not resolve (reported elsewhere)."""
    if entry.label:
        return {entry.label}
    try:
        method = get_method(entry.name)
        return {default_label(method, p) for _, p in _resolve_entry(entry, "")}
    except (HarnessError, ValidationError):
        return {entry.name}


def _check_sweeps(suite: Suite, path: Path) -> None:
    """`report.sweeps` name a method of the suite and parameters of its config."""
    methods = sorted({e.name for e in suite.methods})
    for i, sweep in enumerate(suite.report.sweeps):
        if sweep.method not in methods:
            raise SuiteError(
                f"{path}: field `report.sweeps[{i}].method`: '{sweep.method}' is not a method of this suite; "
                f"use one of {', '.join(methods)}."
            )
        if sweep.lines is not None and sweep.lines == sweep.x:
            raise SuiteError(
                f"{path}: field `report.sweeps[{i}].lines`: '{sweep.lines}' is also the x parameter; drop `lines` "
                f"or name another parameter."
            )
        try:
            fields = sorted(get_method(sweep.method).Config.model_fields)
        except UnknownMethodError:
            continue  # reported with the method line itself
        for side in ("x", "lines"):
            name = getattr(sweep, side)
            if name is not None and name not in fields:
                raise SuiteError(
                    f"{path}: field `report.sweeps[{i}].{side}`: '{name}' is not a parameter of {sweep.method}; "
                    f"use one of {', '.join(fields)}."
                )


def _check_tasks(tasks: list[str], path: Path) -> None:
    """Zero-shot task names exist: the offline pack's or lm-eval's (its installed index, offline)."""
    from harness.metrics.zeroshot import unknown_tasks

    unknown = unknown_tasks(tasks)
    if not unknown:
        return
    i, task = next((i, t) for i, t in enumerate(tasks) if t in unknown)
    close = unknown[task]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise SuiteError(
        f"{path}: field `evaluations.zero_shot.tasks[{i}]`: unknown zero-shot task '{task}': it is neither in the "
        f"offline pack ({', '.join(PACK_TASKS)}) nor one of lm-eval's tasks.{hint} Fix the name (`lm-eval ls tasks` "
        f"lists lm-eval's tasks)."
    )


def _check_evaluations(spec: EvaluationsSpec, path: Path) -> None:
    """Plugin evaluation blocks name a registered evaluation and fit its `Config`."""
    from harness.evaluations.registry import get_evaluation, resolve_evaluations

    for name, block in spec.plugins.items():
        try:
            resolve_evaluations(EvaluationsSpec.model_validate({name: block}))
        except ValidationError as exc:
            details = "; ".join(f"`{format_loc(e['loc'])}`: {e['msg']}" for e in exc.errors()[:4])
            cls = get_evaluation(name)
            raise SuiteError(
                f"{path}: field `evaluations.{name}`: invalid settings — {details}. The settings are the fields of "
                f"{cls.__module__}.{cls.Config.__name__}."
            ) from exc
        except ValueError as exc:  # an unknown name (with close names) or an automatic evaluation
            raise SuiteError(f"{path}: field `evaluations.{name}`: {exc}") from exc


def _check_duplicate_models(suite: Suite, path: Path) -> None:
    """A model listed twice (same id and revision) would run every cell twice under one name."""
    seen: dict[tuple[str, str | None], int] = {}
    for i, model in enumerate(suite.models):
        first = seen.setdefault((model.id, model.revision), i)
        if first != i:
            raise SuiteError(
                f"{path}: field `models[{i}]`: model '{model.id}' is already listed as `models[{first}]`. "
                f"Remove one of the two entries."
            )


def _check_duplicate_lines(suite: Suite, path: Path) -> None:
    """Two method lines must not resolve to the same cell (same method, budget, params and label):
    one of them would silently do nothing."""
    owner: dict[str, int] = {}
    for i, entry in enumerate(suite.methods):
        for cell in _entry_cells(suite, i, entry, suite.models[0], path):
            first = owner.setdefault(cell.key, i)
            if first != i:
                raise SuiteError(
                    f"{path}: field `methods[{i}]`: this line resolves to a cell that `methods[{first}]` already "
                    f"defines ({cell.method_label}{f' budget {cell.budget}' if cell.budget is not None else ''}, "
                    f"seed {cell.seed}, the same params). Remove the repeated budget or line, or give the line a "
                    f"distinct `label` if both are meant to run."
                )


def _check_references(suite: Suite, path: Path) -> None:
    _check_compare(suite, path)
    _check_sweeps(suite, path)
    for i, model in enumerate(suite.models):
        _check_model(model, f"models[{i}]", path)
    _check_dataset(suite.calibration.source, "calibration.source", path)
    if suite.evaluations.perplexity is not None:
        for i, ds in enumerate(suite.evaluations.perplexity.datasets):
            if ds == "redpajama":
                raise SuiteError(
                    f"{path}: field `evaluations.perplexity.datasets[{i}]`: redpajama is a calibration "
                    f"source only; evaluate on wikitext2, c4, ptb, embedded or a text file."
                )
            _check_dataset(ds, f"evaluations.perplexity.datasets[{i}]", path)
    if suite.evaluations.zero_shot is not None:
        _check_tasks(suite.evaluations.zero_shot.tasks, path)
    _check_evaluations(suite.evaluations, path)
    _check_duplicate_models(suite, path)
    for i, entry in enumerate(suite.methods):
        _resolve_entry(entry, f"{path}: field `methods[{i}]`")
        method = get_method(entry.name)
        if entry.seeds is not None and len(entry.seeds) > 1 and not method.modifies_weights:
            raise SuiteError(
                f"{path}: field `methods[{i}].seeds`: method '{entry.name}' is the unquantized reference; it "
                f"has no randomness and runs once. Remove `seeds` from this line."
            )
        if entry.finetune_e2e is not None and not (method.requires_calibration and method.modifies_weights):
            raise SuiteError(
                f"{path}: field `methods[{i}].finetune_e2e`: method '{entry.name}' is "
                f"{'the unquantized reference' if not method.modifies_weights else 'calibration-free'}; end-to-end "
                f"fine-tuning needs a quantized model and calibration sequences. Remove the key from this line."
            )
    _check_duplicate_lines(suite, path)


def _resolve_entry(entry: MethodEntry, where: str) -> list[tuple[int | None, dict[str, Any]]]:
    """(budget, fully resolved params) for each cell of one method line."""
    try:
        method = get_method(entry.name)
    except HarnessError as exc:
        raise SuiteError(f"{where}.name: {exc}") from exc
    combos: list[tuple[int | None, dict[str, Any]]] = []
    for j, budget in enumerate(entry.budgets or [None]):
        try:
            config = method_config(method, budget, entry.params)
        except BudgetError as exc:
            raise SuiteError(f"{where}.budgets[{j}]: {exc}") from exc
        except ValidationError as exc:
            details = "; ".join(f"`params.{format_loc(e['loc'])}`: {e['msg']}" for e in exc.errors()[:4])
            raise SuiteError(
                f"{where} ({entry.name}): invalid params — {details}. Run `harness list` for the "
                f"parameters of '{entry.name}' and their types."
            ) from exc
        combos.append((budget, config.model_dump(mode="json")))
    return combos


def entry_seeds(suite: Suite, entry: MethodEntry) -> list[int]:
    """The seeds one method line runs with: its own `seeds`, else the suite's `seeds`, else
    `[seed]`. The unquantized reference (a method that does not modify weights) runs once:
    with the suite's `seed` if that is among them, else with the first."""
    seeds = entry.seeds or suite.seeds or [suite.seed]
    if not get_method(entry.name).modifies_weights:
        return [suite.seed if suite.seed in seeds else seeds[0]]
    return list(seeds)


def resolve_cells(suite: Suite, suite_path: str | os.PathLike = "suite.yaml") -> list[Cell]:
    """Expand a validated suite into its cells (models × method configs × seeds).

    A cell's seed drives the method's randomness and, unless `calibration.seed` is set, the
    calibration sample. A cell with the suite's `seed` is exactly the cell of a suite without
    `seeds` (same key, same label); other seeds add `/s<seed>` to the label. Two lines of a loaded
    suite never give the same cell (`load_suite` refuses it)."""
    cells: list[Cell] = []
    seen: set[str] = set()
    for model in suite.models:
        for i, entry in enumerate(suite.methods):
            for cell in _entry_cells(suite, i, entry, model, suite_path):
                if cell.key in seen:  # only possible in suites built in code: loaded suites refuse duplicates
                    continue
                seen.add(cell.key)
                cells.append(cell)
    return cells


def _entry_cells(
    suite: Suite, i: int, entry: MethodEntry, model: ModelSpec, suite_path: str | os.PathLike
) -> list[Cell]:
    """The cells of method line `i` on one model: one per budget and seed."""
    from harness.evaluations.registry import resolve_evaluations

    method = get_method(entry.name)
    cells = []
    for budget, params in _resolve_entry(entry, f"{suite_path}: field `methods[{i}]`"):
        for seed in entry_seeds(suite, entry):
            calibration = None
            if method.requires_calibration:
                calibration = suite.calibration.model_copy(
                    update={
                        "seqlen": suite.calibration.seqlen or model.seqlen,
                        "seed": seed if suite.calibration.seed is None else suite.calibration.seed,
                    }
                )
            cells.append(Cell(
                suite=suite.name,
                model=model,
                method=entry.name,
                method_label=entry.label or default_label(method, params),
                budget=budget,
                params=params,
                calibration=calibration,
                evaluations=resolve_evaluations(suite.evaluations),
                seed=seed,
                device=suite.device,
                dtype=suite.dtype,
                save_model=suite.save_models,
                finetune_e2e=entry.finetune_e2e,
                stand_in=suite.stand_in,
                base_seed=None if seed == suite.seed else suite.seed,
            ))
    return cells


def output_dir(suite: Suite, suite_path: str | os.PathLike) -> Path:
    return Path(suite.output_dir) if suite.output_dir else Path("results") / suite.name
