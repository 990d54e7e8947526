"""`EvaluationConfig`, the base of every evaluation's `Config` (as `harness.quantizer.MethodConfig`
is for methods), and `NoSettings`. It imports only pydantic, so the suite schema's built-in
blocks derive from it without importing an evaluation."""
from __future__ import annotations

from harness.strict import StrictModel

__all__ = ["EvaluationConfig", "NoSettings"]


class EvaluationConfig(StrictModel):
    """Base class of every evaluation's config (its suite block): unknown keys are errors, frozen.
    The registry refuses an evaluation whose `Config` does not derive from it."""


class NoSettings(EvaluationConfig):
    """The `Config` of an evaluation without settings: its suite block is `{}`."""
