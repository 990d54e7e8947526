"""`none`: the unquantized reference (the model as loaded)."""
from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from harness.plugin import LayerStats, MethodConfig, QuantContext, QuantizedLinear, Quantizer

__all__ = ["NoneConfig", "NoQuantizer"]


class NoneConfig(MethodConfig):
    """The reference takes no parameters."""


class NoQuantizer(Quantizer):
    """The unquantized reference: the engine evaluates the model without touching its weights."""

    name: ClassVar[str] = "none"
    Config: ClassVar[type[NoneConfig]] = NoneConfig
    requires_calibration: ClassVar[bool] = False
    modifies_weights: ClassVar[bool] = False

    @classmethod
    def presets(cls, budget: int) -> dict[str, Any]:
        raise ValueError(
            "method 'none' is the unquantized reference and has no bit budgets; list it without "
            "`budgets` (and without `params`)"
        )

    def quantize_linear(
        self, linear: nn.Linear, stats: LayerStats | None, ctx: QuantContext
    ) -> QuantizedLinear:
        raise RuntimeError(
            f"method 'none' never quantizes (modifies_weights=False); the engine must skip "
            f"quantization for it (called on layer '{ctx.layer_name}')"
        )
