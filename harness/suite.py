"""Suite files: a typed, validated YAML schema, resolved into a list of independent cells.

A suite is models × methods (explicit `params` and/or nominal `budgets`, resolved through
each method's presets) × evaluations. Every default is written into the resolved cell, and
a cell's key is a hash of that resolved config, so a finished cell is never recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import HarnessError, SuiteError
from harness.registry import get_method, method_names

#: Bump when the meaning of a record changes, so old records are not reused.
RECORD_VERSION = 1

EMBEDDED_MODEL_ALIAS = "smollm2-135m"
KNOWN_DATASETS = ("wikitext2", "c4", "ptb", "redpajama", "embedded")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """A model: the embedded alias, a hub id, a local directory or a GGUF file."""

    id: str
    name: str | None = Field(None, description="short name used in tables (default: derived from id)")
    revision: str | None = None
    seqlen: int | None = Field(None, gt=0, description="default evaluation/calibration length")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return Path(self.id).stem if self.id.endswith(".gguf") else self.id.rstrip("/").split("/")[-1]


class CalibrationSpec(_Strict):
    source: str = "embedded"
    num_sequences: int = Field(128, gt=0)
    seqlen: int | None = Field(None, gt=0)
    seed: int | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the calibration forward passes (autocast); H is always float64"
    )


class PerplexitySpec(_Strict):
    datasets: list[str] = Field(default_factory=lambda: ["embedded"], min_length=1)
    seqlen: int | None = Field(None, gt=0)
    max_windows: int | None = Field(None, gt=0)
    batch_size: int = Field(1, gt=0)


class EvaluationsSpec(_Strict):
    perplexity: PerplexitySpec | None = Field(default_factory=PerplexitySpec)


class MethodEntry(_Strict):
    """One method line of a suite: a name, explicit params and/or nominal bit budgets."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    budgets: list[int] | None = None

    @field_validator("budgets")
    @classmethod
    def _non_empty(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and not v:
            raise ValueError("`budgets` is empty: list at least one bit budget, or remove the key")
        return v


class ReportSpec(_Strict):
    tables: list[Literal["markdown", "latex", "csv"]] = Field(default_factory=lambda: ["markdown", "latex", "csv"])
    plots: list[Literal["png", "svg"]] = Field(default_factory=lambda: ["png", "svg"])


class ExecutorSpec(_Strict):
    type: Literal["local"] = "local"
    timeout_s: float | None = Field(None, gt=0, description="kill a cell after this many seconds")


class Suite(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    output_dir: str | None = None
    save_models: bool = True
    models: list[Union[str, ModelSpec]] = Field(min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    evaluations: EvaluationsSpec = Field(default_factory=EvaluationsSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    executor: Union[Literal["local"], ExecutorSpec] = "local"

    @model_validator(mode="after")
    def _normalise(self) -> "Suite":
        models = [ModelSpec(id=m) if isinstance(m, str) else m for m in self.models]
        executor = ExecutorSpec(type=self.executor) if isinstance(self.executor, str) else self.executor
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "executor", executor)
        return self


class Cell(_Strict):
    """One unit of work: one model, one fully resolved method config, its evaluations."""

    suite: str
    model: ModelSpec
    method: str
    method_label: str
    budget: int | None
    params: dict[str, Any]
    calibration: CalibrationSpec | None
    evaluations: EvaluationsSpec
    seed: int
    device: str
    dtype: str
    save_model: bool

    @property
    def key(self) -> str:
        """Hash of everything that determines the cell's results."""
        payload = self.model_dump(mode="json", exclude={"suite", "save_model"})
        payload["record_version"] = RECORD_VERSION
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        budget = f"/b{self.budget}" if self.budget is not None else ""
        return f"{self.model.label}/{self.method_label}{budget}"


# --------------------------------------------------------------------------- loading

def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "ModelSpec", "ExecutorSpec", "literal['local']") or "function-after" in str(part):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _validation_message(path: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:4]:
        loc = _format_loc(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; unknown keys are not allowed)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        parts.append(f"field `{loc}`: {msg}")
    more = f" (and {len(exc.errors()) - 4} more)" if len(exc.errors()) > 4 else ""
    return f"{path}: invalid suite — " + "; ".join(parts) + more + ". Fix the suite file and run `harness validate` again."


def load_suite(path: str | os.PathLike) -> Suite:
    """Read and validate a suite file (schema, methods, budgets, models, datasets)."""
    p = Path(path)
    if not p.is_file():
        raise SuiteError(f"{p}: suite file not found. Give the path of a YAML suite, e.g. suites/quickstart.yaml.")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SuiteError(f"{p}: not valid YAML ({str(exc).splitlines()[0]}). Fix the syntax at the line it names.") from exc
    if not isinstance(raw, dict):
        raise SuiteError(f"{p}: a suite must be a YAML mapping with at least `name`, `models` and `methods`.")
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError(_validation_message(str(p), exc)) from exc
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
    if spec.id == EMBEDDED_MODEL_ALIAS or resolve_path(spec.id, suite_path) is not None:
        return
    looks_like_path = spec.id.endswith(".gguf") or spec.id.startswith((".", "/", "~"))
    if looks_like_path or not _HUB_ID.match(spec.id):
        raise SuiteError(
            f"{suite_path}: field `{where}`: model '{spec.id}' is neither the embedded alias "
            f"'{EMBEDDED_MODEL_ALIAS}', an existing local directory or GGUF file, nor a hub id of the "
            f"form 'org/name'. Fix the path (relative paths are read from the working directory "
            f"or the suite's folder) or use a hub id."
        )


def _check_references(suite: Suite, path: Path) -> None:
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
    for i, entry in enumerate(suite.methods):
        _resolve_entry(entry, f"{path}: field `methods[{i}]`")


def _resolve_entry(entry: MethodEntry, where: str) -> list[tuple[int | None, dict[str, Any]]]:
    """(budget, fully resolved params) for each cell of one method line."""
    try:
        method = get_method(entry.name)
    except HarnessError as exc:
        raise SuiteError(f"{where}.name: {exc}") from exc
    combos: list[tuple[int | None, dict[str, Any]]] = []
    for j, budget in enumerate(entry.budgets or [None]):
        base: dict[str, Any] = {}
        if budget is not None:
            try:
                base = dict(method.presets(budget))
            except ValueError as exc:
                raise SuiteError(
                    f"{where}.budgets[{j}]: {exc}. Supported budgets for '{entry.name}': "
                    f"{', '.join(map(str, method.supported_budgets())) or 'none'}."
                ) from exc
        merged = {**base, **entry.params}
        try:
            config = method.Config.model_validate(merged)
        except ValidationError as exc:
            details = "; ".join(f"`params.{_format_loc(e['loc'])}`: {e['msg']}" for e in exc.errors()[:4])
            raise SuiteError(
                f"{where} ({entry.name}): invalid params — {details}. Run `harness list` for the "
                f"parameters of '{entry.name}' and their types."
            ) from exc
        combos.append((budget, config.model_dump(mode="json")))
    return combos


def resolve_cells(suite: Suite, suite_path: str | os.PathLike = "suite.yaml") -> list[Cell]:
    """Expand a validated suite into its cells (models × method configs)."""
    cells: list[Cell] = []
    seen: set[str] = set()
    for model in suite.models:
        for i, entry in enumerate(suite.methods):
            method = get_method(entry.name)
            for budget, params in _resolve_entry(entry, f"{suite_path}: field `methods[{i}]`"):
                calibration = None
                if method.requires_calibration:
                    calibration = suite.calibration.model_copy(
                        update={
                            "seqlen": suite.calibration.seqlen or model.seqlen,
                            "seed": suite.seed if suite.calibration.seed is None else suite.calibration.seed,
                        }
                    )
                cell = Cell(
                    suite=suite.name,
                    model=model,
                    method=entry.name,
                    method_label=entry.label or entry.name,
                    budget=budget,
                    params=params,
                    calibration=calibration,
                    evaluations=suite.evaluations,
                    seed=suite.seed,
                    device=suite.device,
                    dtype=suite.dtype,
                    save_model=suite.save_models,
                )
                if cell.key in seen:
                    continue
                seen.add(cell.key)
                cells.append(cell)
    return cells


def output_dir(suite: Suite, suite_path: str | os.PathLike) -> Path:
    return Path(suite.output_dir) if suite.output_dir else Path("results") / suite.name
