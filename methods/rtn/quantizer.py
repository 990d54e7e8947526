"""`RTNQuantizer`: the calibration-free baseline."""
from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
from torch import nn

from harness.plugin import LayerStats, QuantContext, Quantizer
from methods.rtn.algorithm import dequantize_codes, minmax_grid, quantize_codes
from methods.rtn.config import RTNConfig
from methods.rtn.layer import RTNLinear

#: Nominal bit budget -> params. Group 64 (not the GPTQ paper's 128) because it divides the
#: hidden size of every LLaMA-family model, including the embedded SmolLM2-135M (576 = 9 x 64;
#: 128 does not divide 576). Effective bits: 2 + 18/64 = 2.28, 3 + 19/64 = 3.30,
#: 4 + 20/64 = 4.31, 8 + 24/in (one group per row).
_PRESETS: dict[int, dict[str, Any]] = {
    2: {"bits": 2, "group_size": 64},
    3: {"bits": 3, "group_size": 64},
    4: {"bits": 4, "group_size": 64},
    8: {"bits": 8, "group_size": -1},
}


class RTNQuantizer(Quantizer):
    """Round each weight to the nearest point of its group's min-max grid (no calibration)."""

    name: ClassVar[str] = "rtn"
    Config: ClassVar[type[RTNConfig]] = RTNConfig
    layer_class: ClassVar[type[RTNLinear]] = RTNLinear
    requires_calibration: ClassVar[bool] = False
    budget_presets: ClassVar[dict[int, dict[str, Any]]] = _PRESETS
    preset_hint: ClassVar[str] = (
        "1-bit RTN collapses each group to two levels, give explicit `params: {bits: ..., group_size: ...}` "
        "to run it anyway"
    )
    config: RTNConfig

    def flops_for_shape(self, out_features: int, in_features: int) -> float:
        """About ten elementwise operations per weight (min/max, scale, round, clamp)."""
        return 10.0 * out_features * in_features

    def quantize_linear(
        self, linear: nn.Linear, stats: LayerStats | None, ctx: QuantContext
    ) -> RTNLinear:
        """Quantize `linear.weight` [out, in]; returns an `RTNLinear` on the weight's device.

        The math runs on `ctx.device` in float32. Appends {layer, seconds, rel_weight_error}
        to `ctx.log`, where rel_weight_error = ||Ŵ - W||² / ||W||².
        """
        cfg = self.config
        start = time.perf_counter()
        out_features, in_features = linear.weight.shape
        if cfg.group_size != -1 and in_features % cfg.group_size:
            divisors = [d for d in (32, 64, 128, 256) if in_features % d == 0]
            raise ValueError(
                f"rtn: layer '{ctx.layer_name}' has in_features={in_features}, which "
                f"group_size={cfg.group_size} does not divide; set group_size to -1 or a divisor "
                f"of {in_features}" + (f" (e.g. {divisors})" if divisors else "")
            )
        W = linear.weight.detach().to(device=ctx.device, dtype=torch.float32)
        if not bool(torch.isfinite(W).all()):
            raise ValueError(f"rtn: layer '{ctx.layer_name}' has non-finite weights (NaN or inf)")
        scales, zeros = minmax_grid(W, cfg.bits, cfg.group_size, cfg.symmetric)
        if not bool(torch.isfinite(scales).all()):
            raise ValueError(
                f"rtn: layer '{ctx.layer_name}' has a group range too large for a float16 scale "
                f"(max |w| = {W.abs().max().item():.3g})"
            )
        codes = quantize_codes(W, scales, zeros, cfg.bits, cfg.group_size)
        bias = None if linear.bias is None else linear.bias.detach()
        layer = RTNLinear.from_codes(
            codes, scales, zeros, bits=cfg.bits, group_size=cfg.group_size,
            symmetric=cfg.symmetric, bias=bias,
        ).to(linear.weight.device)
        err = (dequantize_codes(codes, scales, zeros, cfg.group_size) - W).pow(2).sum()
        ctx.log.append({
            "layer": ctx.layer_name,
            "seconds": time.perf_counter() - start,
            "rel_weight_error": float(err / W.pow(2).sum().clamp_min(1e-30)),
        })
        return layer
