"""The evaluation registry: built-in evaluations and those of third-party packages (entry-point
group `harness.evaluations`), by name. It imports no evaluation (targets are `"module:attr"`
strings, imported on first use), so `harness.suite` can check a suite's blocks through it."""
from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from harness.errors import EvaluationPluginError, UnknownEvaluationError
from harness.evaluations.config import EvaluationConfig
from harness.registry import Registry

ENTRY_POINT_GROUP = "harness.evaluations"

#: Built-in evaluations in the order they run: each is `harness.evaluations.<name>:<class>` (kept
#: in sync with pyproject's entry points so the source tree works uninstalled).
BUILTIN_EVALUATIONS: dict[str, str] = {
    name: f"harness.evaluations.{name}:{cls}"
    for name, cls in (("perplexity", "PerplexityEvaluation"), ("zero_shot", "ZeroShotEvaluation"),
                      ("agreement", "AgreementEvaluation"), ("throughput", "ThroughputEvaluation"))
}

EVALUATIONS: Registry = Registry(
    "evaluation", group=ENTRY_POINT_GROUP, error=UnknownEvaluationError, builtins=BUILTIN_EVALUATIONS,
    clash_error=EvaluationPluginError,
)
#: The metrics every cell records before its evaluations run (`harness.runner`: bits and size);
#: no evaluation may be registered or requested under one of these names.
CELL_METRICS = ("bits", "bits_formula", "bits_paper", "model_bits", "quantized_weights", "total_weights", "size_bytes")
_Spec = TypeVar("_Spec", bound=BaseModel)


def get_evaluation(name: str) -> Any:
    """The `Evaluation` subclass registered under `name` (UnknownEvaluationError, with close
    names, when there is none; EvaluationPluginError when it breaks the contract: its `Config`
    does not derive from `EvaluationConfig`, or its `name` is not the registry name)."""
    cls = EVALUATIONS.get(name)
    where = f"evaluation '{name}' ({getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)})"
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, EvaluationConfig)
            and config.model_config.get("extra") == "forbid"):
        raise EvaluationPluginError(
            f"{where}: its `Config` ({getattr(config, '__qualname__', config)!s}) does not derive from "
            f"harness.evaluations.EvaluationConfig (strict: unknown keys are errors, frozen). Fix the package that "
            f"provides it: `class MyConfig(EvaluationConfig): ...`, or `Config = NoSettings` when it has no settings."
        )
    if getattr(cls, "name", None) != name:
        raise EvaluationPluginError(
            f"{where} is registered as '{name}' but its class attribute `name` is {getattr(cls, 'name', None)!r}. "
            f"Fix the package that provides it: set `name = \"{name}\"`, or rename its entry point "
            f"(group '{ENTRY_POINT_GROUP}')."
        )
    return cls


def evaluation_names() -> list[str]:
    return EVALUATIONS.names()


def resolve_evaluations(spec: _Spec) -> _Spec:
    """`spec` (a suite's `EvaluationsSpec`) with each plugin block validated by its evaluation's
    `Config` and written out with its defaults; `spec` itself when it has no plugin blocks, so
    such cells keep their keys.

    Raises UnknownEvaluationError (an unregistered name), EvaluationPluginError (an evaluation
    that breaks the contract, or one named like a metric every cell has, e.g. `bits`), ValueError
    (an automatic evaluation named in the suite) or pydantic's ValidationError (a bad block)."""
    plugins = spec.plugins
    if not plugins:
        return spec
    blocks = {}
    for name, block in plugins.items():
        if name in CELL_METRICS:
            raise EvaluationPluginError(
                f"'{name}' is a metric every cell records ({', '.join(CELL_METRICS)}), so an evaluation may not "
                f"be named so: its result would replace that metric. Register the evaluation under another name "
                f"(its entry point in group '{ENTRY_POINT_GROUP}') and use that name here."
            )
        cls = get_evaluation(name)
        if cls.automatic:
            raise ValueError(f"'{name}' runs for every quantized cell by itself; remove it from `evaluations`")
        blocks[name] = cls.Config.model_validate(block).model_dump(mode="json")
    return type(spec).model_validate({**spec.model_dump(exclude=set(plugins)), **blocks})
