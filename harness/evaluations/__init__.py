"""Evaluations: what is measured on a cell's quantized model, registered like methods.

Running a cell is load -> calibrate -> quantize -> bits, size, save -> for each requested
evaluation, `run` it (`harness.runner`). Built-ins: `perplexity`, `zero_shot`, `throughput`
(each configured by its block in the suite's `evaluations:`) and `agreement` (automatic: every
quantized cell). A third-party package adds one through the entry-point group
`harness.evaluations`; nothing in harness/ changes.

The contract (`harness.evaluations.base`):

- a subclass of `Evaluation` with a registry `name` and a `Config`: a pydantic model with
  `extra="forbid"` (`NoSettings` when there is nothing to set). A suite requests it with a
  block under its name, validated by `Config`, e.g. `evaluations: {mean_logit: {windows: 4}}`
  (`mean_logit: {}` for the defaults). The validated block, defaults included, is part of the
  cell and of its key, so changing it re-runs the cell; a cell without plugin blocks keeps
  the key it had before plugins existed;
- `run(context) -> result`: `context` (`EvaluationContext`) holds the quantized model, its
  tokenizer and family adapter, the cell, the results store, device, dtype, the progress
  switch, the suite's base folder and the metrics measured so far. The result, JSON-
  serialisable, is stored as the record's `metrics[<name>]`;
- an exception fails the cell (the record keeps the traceback; `NonFiniteError` gives the
  failure kind `nonfinite`); an evaluation whose failure should leave the cell ok returns
  the error inside its result, as `zero_shot` does.

Order: the built-ins in the order above (perplexity, zero_shot, agreement, throughput), then
plugin evaluations in the order of the suite.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from pydantic import ValidationError

from harness.errors import UnknownEvaluationError
from harness.evaluations.base import Evaluation, EvaluationContext, NonFiniteError, NoSettings
from harness.registry import Registry

if TYPE_CHECKING:
    from harness.suite import Cell, EvaluationsSpec

__all__ = [
    "BUILTIN_EVALUATIONS", "ENTRY_POINT_GROUP", "Evaluation", "EvaluationContext", "NoSettings", "NonFiniteError",
    "evaluation_names", "get_evaluation", "planned", "resolve_evaluations",
]

ENTRY_POINT_GROUP = "harness.evaluations"

#: Built-in evaluations, in the order they run: name -> "module:attr" (kept in sync with
#: pyproject's entry points so the source tree works uninstalled).
BUILTIN_EVALUATIONS: dict[str, str] = {
    "perplexity": "harness.evaluations.perplexity:PerplexityEvaluation",
    "zero_shot": "harness.evaluations.zero_shot:ZeroShotEvaluation",
    "agreement": "harness.evaluations.agreement:AgreementEvaluation",
    "throughput": "harness.evaluations.throughput:ThroughputEvaluation",
}

EVALUATIONS: Registry = Registry("evaluation", group=ENTRY_POINT_GROUP, error=UnknownEvaluationError)
_discovered = False


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for name, target in BUILTIN_EVALUATIONS.items():
        EVALUATIONS.register(name, target)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN_EVALUATIONS and ep.value == BUILTIN_EVALUATIONS[ep.name]:
            continue
        EVALUATIONS.register(ep.name, ep.value)


def get_evaluation(name: str) -> type[Evaluation]:
    """The `Evaluation` subclass registered under `name` (UnknownEvaluationError, with close
    names, when there is none)."""
    _discover()
    return EVALUATIONS.get(name)


def evaluation_names() -> list[str]:
    _discover()
    return EVALUATIONS.names()


def resolve_evaluations(spec: EvaluationsSpec) -> EvaluationsSpec:
    """`spec` with each plugin block validated by its evaluation's `Config` and written out with
    its defaults (`spec` itself when it has no plugin blocks, so such cells keep their keys).

    Raises UnknownEvaluationError (an unregistered name), ValueError (an automatic evaluation
    named in the suite) or pydantic's ValidationError (a bad block)."""
    if not spec.plugins:
        return spec
    blocks = {}
    for name, block in spec.plugins.items():
        cls = get_evaluation(name)
        if cls.automatic:
            raise ValueError(f"'{name}' runs for every quantized cell by itself; remove it from `evaluations`")
        blocks[name] = cls.Config.model_validate(block).model_dump(mode="json")
    return type(spec).model_validate({**spec.model_dump(exclude=set(spec.plugins)), **blocks})


def planned(cell: Cell, *, quantized: bool) -> list[Evaluation]:
    """The evaluations `cell` requests, configured, in the order they run; `quantized`: the
    cell's method modifies the weights (automatic evaluations run only then)."""
    spec = cell.evaluations
    plugins = spec.plugins
    out: list[Evaluation] = []
    for name in BUILTIN_EVALUATIONS:
        cls = get_evaluation(name)
        block = getattr(spec, name, None)
        if block is not None:
            out.append(cls(block))
        elif cls.automatic and quantized:
            out.append(cls(cls.Config()))
    for name, block in plugins.items():
        cls = get_evaluation(name)
        try:
            out.append(cls(cls.Config.model_validate(block)))
        except ValidationError as exc:
            raise ValueError(f"cell {cell.label}: invalid `evaluations.{name}` block: {exc}") from exc
    return out
