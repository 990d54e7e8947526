"""The evaluation registry: built-in evaluations and those of third-party packages (entry-point
group `harness.evaluations`), by name. It imports no evaluation (targets are `"module:attr"`
strings, imported on first use), so `harness.suite` can check a suite's blocks through it."""
from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from harness.errors import UnknownEvaluationError
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
    "evaluation", group=ENTRY_POINT_GROUP, error=UnknownEvaluationError, builtins=BUILTIN_EVALUATIONS
)
_Spec = TypeVar("_Spec", bound=BaseModel)


def get_evaluation(name: str) -> Any:
    """The `Evaluation` subclass registered under `name` (UnknownEvaluationError, with close
    names, when there is none)."""
    return EVALUATIONS.get(name)


def evaluation_names() -> list[str]:
    return EVALUATIONS.names()


def resolve_evaluations(spec: _Spec) -> _Spec:
    """`spec` (a suite's `EvaluationsSpec`) with each plugin block validated by its evaluation's
    `Config` and written out with its defaults; `spec` itself when it has no plugin blocks, so
    such cells keep their keys.

    Raises UnknownEvaluationError (an unregistered name), ValueError (an automatic evaluation
    named in the suite) or pydantic's ValidationError (a bad block)."""
    plugins = spec.plugins
    if not plugins:
        return spec
    blocks = {}
    for name, block in plugins.items():
        cls = get_evaluation(name)
        if cls.automatic:
            raise ValueError(f"'{name}' runs for every quantized cell by itself; remove it from `evaluations`")
        blocks[name] = cls.Config.model_validate(block).model_dump(mode="json")
    return type(spec).model_validate({**spec.model_dump(exclude=set(plugins)), **blocks})
