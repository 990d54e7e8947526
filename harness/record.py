"""The cell record: the typed, versioned result of one cell, and the one way to read it.

The store (`harness.store`) writes one JSON record per cell and reads it back through
:meth:`CellRecord.load`, which migrates older records; tables, comparisons, claims and the
command line read records through the properties below, never through the raw JSON.

Versions (``version``; records without it are version 0):

- **0**: records written before this module. Migration to 1: perplexity stored as a bare
  number becomes ``{"ppl": x}``; a zero-shot result stored as ``{task: result, ...}`` gets its
  ``tasks`` level; an AQLM/CRVQ record from before the ``variant`` param is labelled by the
  variant it ran (``method_label``, see :func:`_variant_label`).
- **1**: the current layout (the fields of :class:`CellRecord`).

Every field is optional except ``key``, and unknown fields are kept (``extra="allow"``) at every
level, so a plugin evaluation's metrics and fields added by a newer harness round-trip:
``CellRecord.load(raw).dump()`` is ``raw`` plus ``version`` (and what the migration changed).
Numbers typed ``float`` come back as floats (``1`` reads as ``1.0``; equal in JSON and Python).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, Optional, Union, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from harness.identity import IdentityScope, cell_identity
from harness.metrics.results import PerplexityResult, TaskResult, ZeroShotResult

__all__ = [
    "DEFAULT_SEED", "RECORD_VERSION", "CellRecord", "Metrics", "PerplexityMetric", "RecordError",
    "ThroughputMetric", "ThroughputRow", "ZeroShotMetric", "ZeroShotTask",
]

logger = logging.getLogger(__name__)

#: The record layout written by this harness (see the module docstring).
RECORD_VERSION = 1
#: The seed of a record that does not say (written before repeats): the suite's default `seed`.
DEFAULT_SEED = 0


class _Open(BaseModel):
    """A record part: unknown fields kept, immutable once read."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


def _record_part(result_type: type, name: str, **more: Any) -> type[_Open]:
    """An open record model with every field of the metric result dataclass ``result_type``,
    each optional (records written before a field existed lack it), plus the fields ``more``
    (``name=(type, default)``) that the record adds or types differently."""
    hints = get_type_hints(result_type)
    fields: dict[str, Any] = {f.name: (Optional[hints[f.name]], None) for f in dataclasses.fields(result_type)}
    fields.update(more)
    return create_model(name, __base__=_Open, **fields)


class PerplexityMetric(_record_part(PerplexityResult, "PerplexityMetricFields", token_hash=(Optional[str], None))):
    """``metrics.perplexity.<dataset>``: a `harness.metrics.perplexity.PerplexityResult` (NLL in
    nats per predicted token; ``bpb`` bits per UTF-8 byte) plus ``token_hash``."""


class ZeroShotTask(_record_part(TaskResult, "ZeroShotTaskFields", error=(Optional[dict[str, Any]], None))):
    """``metrics.zero_shot.tasks.<task>``: a `harness.metrics.zeroshot.TaskResult` (accuracies in [0, 1])."""

    finished = TaskResult.finished  # one rule: evaluated without error and with an accuracy

    def accuracy(self, metric: str = "acc") -> float | None:
        """``acc`` or ``acc_norm`` (tasks without a normalised accuracy, e.g. winogrande and boolq,
        give ``acc`` for it); None when not measured."""
        value = getattr(self, metric, None)
        if value is None and metric == "acc_norm":
            value = self.acc
        return None if value is None else float(value)


class ZeroShotMetric(_record_part(
    ZeroShotResult, "ZeroShotMetricFields",
    tasks=(dict[str, ZeroShotTask], Field(default_factory=dict)),
    average=(Union[dict[str, Any], float, None], None),  # {acc, acc_norm, tasks}; a number in version-0 records
    error=(Optional[dict[str, Any]], None),  # the whole evaluation failed
)):
    """``metrics.zero_shot``: `harness.metrics.zeroshot.ZeroShotResult.to_dict()`, or ``error``
    when the whole evaluation failed."""


class ThroughputRow(_Open):
    """One batch size of ``metrics.throughput.results`` (`harness.metrics.throughput`): decode
    tokens/s per sequence, median and extremes of the timed repeats."""

    batch_size: int | None = None
    tokens_per_s: float | None = None
    tokens_per_s_min: float | None = None
    tokens_per_s_max: float | None = None


class ThroughputMetric(_Open):
    """``metrics.throughput``: the quantized model's decode measurement (`decode_throughput`)."""

    results: list[ThroughputRow] = Field(default_factory=list)


class Metrics(_Open):
    """``metrics``: bits (`harness.metrics.bits.BitsSummary` without its layers), the saved
    size, and one entry per evaluation (plugin evaluations add their own, kept as they are)."""

    bits: float | None = None
    bits_formula: float | str | None = None  # a formula text in some version-0 records
    bits_paper: float | None = None
    model_bits: float | None = None
    quantized_weights: int | None = None
    total_weights: int | None = None
    size_bytes: int | None = None
    perplexity: dict[str, PerplexityMetric] | None = None
    zero_shot: ZeroShotMetric | None = None
    agreement: dict[str, Any] | None = None
    throughput: ThroughputMetric | None = None


class RecordError(_Open):
    """``error`` of a failed record: exception type, failure kind, message (and traceback)."""

    type: str | None = None
    kind: str | None = None
    message: str | None = None


class CellRecord(_Open):
    """One cell's record. Read it with :meth:`load`, write it with :meth:`dump` (the store does both)."""

    version: int = RECORD_VERSION
    key: str
    label: str | None = None
    suite: str | None = None
    model: dict[str, Any] | None = None
    method: str | None = None
    stored_method_label: str | None = Field(None, alias="method_label")
    budget: int | None = None
    params: dict[str, Any] | None = None
    reference: bool | None = None
    cell: dict[str, Any] | None = None
    status: str | None = None
    metrics: Metrics | None = None
    calibration: dict[str, Any] | None = None
    layers: list[dict[str, Any]] | None = None
    saved_model: str | None = None
    timings: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    error: RecordError | None = None
    finished_at: str | None = None
    executor: dict[str, Any] | None = None

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> CellRecord:
        """A record from its JSON dict (any version), migrated to :data:`RECORD_VERSION`.
        Raises ``ValueError`` naming the record and the field when it is not a cell record."""
        if isinstance(raw, CellRecord):
            return raw
        data = dict(raw)
        version = data.get("version", 0)
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"record {data.get('key')!r}: `version` {version!r} is not a record version (0, 1, ...)")
        if version > RECORD_VERSION:
            logger.debug("record %s: version %d is newer than this harness's %d; read as it is",
                         data.get("key"), version, RECORD_VERSION)
        if version == 0:
            data = _migrate_v0(data)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
            name = data.get("key", data.get("label"))
            raise ValueError(f"record {name!r} is not a valid cell record ({problems})") from None

    def dump(self) -> dict[str, Any]:
        """The JSON dict the store writes: the fields read (or given), ``version`` first."""
        return {"version": self.version, **self.model_dump(exclude_unset=True, by_alias=True, exclude={"version"})}

    # ------------------------------------------------------------------ identity
    @property
    def ok(self) -> bool:
        """The cell finished (``status == "ok"``); failed cells are re-run."""
        return self.status == "ok"

    @property
    def model_label(self) -> str:
        """The model's label (``model.label``; else the first part of the cell label)."""
        return str((self.model or {}).get("label") or str(self.label or "?").split("/")[0])

    @property
    def method_label(self) -> str:
        """The method's label in tables (``method_label``; else the registered method name)."""
        return str(self.stored_method_label or self.method or "?")

    @property
    def seed(self) -> int:
        """The cell's seed (``cell.seed``; older records ``environment.seeds.cell``); a record that
        says neither ran before repeats existed, with the suite's default :data:`DEFAULT_SEED`."""
        seed = (self.cell or {}).get("seed")
        if seed is None:
            seed = ((self.environment or {}).get("seeds") or {}).get("cell")
        return DEFAULT_SEED if seed is None else int(seed)

    @property
    def is_reference(self) -> bool:
        """An unquantized reference cell (``reference``; older records: method ``none``)."""
        return bool(self.reference) if self.reference is not None else self.method == "none"

    @property
    def display(self) -> str:
        """``<label> (key <key>)``, for messages."""
        return f"{self.label or '?'} (key {self.key})"

    @property
    def repeat_group(self) -> str:
        """Equal for records that repeat one configuration with other seeds
        (:data:`IdentityScope.REPEAT_GROUP`); a record without its cell config is a group of its own."""
        return cell_identity(self.cell, IdentityScope.REPEAT_GROUP) if isinstance(self.cell, dict) else "key:" + self.key

    # ------------------------------------------------------------------ metrics
    def metric(self, name: str) -> float | None:
        """A scalar of ``metrics`` (``bits``, ``bits_paper``, ``model_bits``, ``size_bytes``, ...); None if absent."""
        value = getattr(self.metrics, name, None) if self.metrics is not None else None
        if value is None and self.metrics is not None:
            value = (self.metrics.model_extra or {}).get(name)
        try:
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None

    @property
    def bits(self) -> float | None:
        """Measured bits per quantized weight (``metrics.bits``)."""
        return self.metric("bits")

    @property
    def perplexities(self) -> dict[str, PerplexityMetric]:
        """``{dataset: PerplexityMetric}`` in the order evaluated (empty without perplexity)."""
        return dict(self.metrics.perplexity or {}) if self.metrics is not None else {}

    def perplexity(self, dataset: str) -> PerplexityMetric | None:
        """The perplexity evaluation of ``dataset`` (``.ppl``, ``.bpb``, ``.window_nll``, ...), or None."""
        return self.perplexities.get(dataset)

    def window_nll(self, dataset: str) -> list[float] | None:
        """The per-window mean NLLs of ``dataset`` (None when not stored: older records)."""
        ppl = self.perplexity(dataset)
        return list(ppl.window_nll) if ppl is not None and ppl.window_nll else None

    @property
    def zero_shot(self) -> ZeroShotMetric | None:
        return self.metrics.zero_shot if self.metrics is not None else None

    @property
    def zero_shot_tasks(self) -> dict[str, ZeroShotTask]:
        """Every zero-shot task stored, failed ones included (empty without zero-shot)."""
        return dict(self.zero_shot.tasks) if self.zero_shot is not None else {}

    @property
    def finished_tasks(self) -> dict[str, ZeroShotTask]:
        """The zero-shot tasks evaluated without error and with an accuracy."""
        return {t: v for t, v in self.zero_shot_tasks.items() if v.finished}

    def accuracy(self, task: str, metric: str = "acc") -> float | None:
        """Zero-shot ``acc``/``acc_norm`` of ``task`` as a fraction (see :meth:`ZeroShotTask.accuracy`)."""
        result = self.zero_shot_tasks.get(task)
        return None if result is None or result.error is not None else result.accuracy(metric)

    def zero_shot_average(self, metric: str = "acc") -> float | None:
        """The stored mean accuracy over the finished tasks (``metrics.zero_shot.average``)."""
        average = self.zero_shot.average if self.zero_shot is not None else None
        value = average.get(metric) if isinstance(average, dict) else None
        return None if value is None else float(value)

    def evaluation_errors(self) -> list[tuple[str, dict[str, Any]]]:
        """``(evaluation, {type, message})`` of each evaluation that failed inside this record:
        the whole zero-shot evaluation (``zero_shot``) or one task (``zero_shot:<task>``)."""
        zs = self.zero_shot
        if zs is None:
            return []
        errors = [("zero_shot", zs.error)] if zs.error else []
        return errors + [(f"zero_shot:{t}", v.error) for t, v in zs.tasks.items() if v.error]

    @property
    def throughput_rows(self) -> list[ThroughputRow]:
        """The quantized model's decode throughput, one row per batch size measured."""
        tp = self.metrics.throughput if self.metrics is not None else None
        return [r for r in (tp.results if tp is not None else []) if r.tokens_per_s is not None]

    def tokens_per_s(self) -> dict[int, tuple[float, float, float]]:
        """``{batch size: (median, slowest, fastest repeat)}`` decode tokens/s per sequence."""
        out = {}
        for row in self.throughput_rows:
            median = float(row.tokens_per_s)
            low = median if row.tokens_per_s_min is None else float(row.tokens_per_s_min)
            high = median if row.tokens_per_s_max is None else float(row.tokens_per_s_max)
            out[1 if row.batch_size is None else row.batch_size] = (median, low, high)
        return out


# --------------------------------------------------------------------------- migration

def _migrate_v0(data: dict[str, Any]) -> dict[str, Any]:
    """A version-0 record as version 1 (see the module docstring); ``data`` is not modified."""
    data = {**data, "version": 1}
    metrics = data.get("metrics")
    if isinstance(metrics, dict):
        metrics = dict(metrics)
        ppl = metrics.get("perplexity")
        if isinstance(ppl, dict) and any(isinstance(v, (int, float)) for v in ppl.values()):
            metrics["perplexity"] = {d: {"ppl": v} if isinstance(v, (int, float)) else v for d, v in ppl.items()}
        zs = metrics.get("zero_shot")
        if isinstance(zs, dict) and "tasks" not in zs and any(isinstance(v, dict) for t, v in zs.items() if t != "error"):
            tasks = {t: v for t, v in zs.items() if isinstance(v, dict) and t != "error"}
            metrics["zero_shot"] = {"tasks": tasks, **{k: v for k, v in zs.items() if k not in tasks}}
        data["metrics"] = metrics
    label = _variant_label(data)
    if label is not None:
        data["method_label"] = label
    return data


def _variant_label(record: Mapping[str, Any]) -> str | None:
    """The method label its method gives a record's params (`Quantizer.default_label`) when the
    record predates `variant` (issue P11: AQLM and CRVQ cells that ran the harness's variant under
    the bare method name, e.g. `crvq-kmeans_metric=hessian-reorder=critical_first`), so tables
    of old results say which algorithm ran; None for records with a `variant` param or a label of
    their own, and for params a method no longer accepts."""
    params, method = record.get("params"), record.get("method")
    if not isinstance(params, dict) or "variant" in params or not method or record.get("method_label") not in (None, method):
        return None
    try:
        from harness.registry import default_label, get_method

        cls = get_method(method)
        if "variant" not in cls.Config.model_fields:
            return None
        label = default_label(cls, params)
    except Exception:  # an unknown method or outdated params: keep the stored label
        return None
    return None if label == method else label
