"""A contract test for plugin authors: `check_quantizer(MyQuantizer)` checks a method against the
`Quantizer` / `QuantizedLinear` contract (see README, "Adding a method").

It checks, on a small synthetic linear layer:
  config     `Config` validates the (budget preset +) params and rejects an unknown key with an
             error that names it; every supported budget's preset validates;
  quantize   `quantize_linear` returns a `QuantizedLinear` of the layer's shape and leaves the
             input layer unchanged (without statistics when the method is calibration-free, and
             with a small random H);
  bits       `bits_for_shape(out, in)` equals the layer's `formula_bits()` / `paper_bits()`, and
             the stored tensors (each one a tensor of the layer's state) count `measured_bits()`
             = `formula_bits()` (up to `bits_tolerance` bits per weight, e.g. word padding);
  reload     saved and reloaded through `harness.checkpoint` (the path of quantized models), the
             layer has the same class, bits, dequantized weight and forward;
  forward    `forward(x)` agrees with the dequantized weight: y = x Ŵᵀ + b, for few and many tokens.
Failures raise `AssertionError` with a message naming the method and the broken promise, so the
helper works under any test framework. Methods that do not modify weights get the config checks.
"""
from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from typing import Any, NoReturn

import torch
from pydantic import ValidationError
from torch import nn

from harness.checkpoint import restore_quantized, save_quantized
from harness.quantizer import LayerStats, QuantContext, QuantizedLinear, Quantizer
from harness.registry import method_config

__all__ = ["check_quantizer"]

_UNKNOWN_KEY = "not_a_parameter_of_this_method"


def _fail(cls: type[Quantizer], message: str) -> NoReturn:
    raise AssertionError(f"{cls.__name__} ('{getattr(cls, 'name', '?')}'): {message}")


def _check_config(cls: type[Quantizer], budget: int | None, params: Mapping[str, Any]) -> Quantizer:
    try:
        config = method_config(cls, budget, params)
    except (ValueError, ValidationError) as exc:
        _fail(cls, f"budget {budget} with params {dict(params)} does not give a valid config: {exc}")
    try:
        method_config(cls, budget, {**params, _UNKNOWN_KEY: 1})
    except ValidationError as exc:
        if _UNKNOWN_KEY not in str(exc):
            _fail(cls, f"the error for an unknown param does not name it: {exc}")
    else:
        _fail(cls, f"Config accepts the unknown param '{_UNKNOWN_KEY}' (use extra='forbid': subclass MethodConfig)")
    for b in cls.supported_budgets():
        try:
            preset = method_config(cls, b)
        except (ValueError, ValidationError) as exc:
            _fail(cls, f"the preset of budget {b} does not validate: {exc}")
        if json.loads(json.dumps(preset.model_dump(mode="json"))) != preset.model_dump(mode="json"):
            _fail(cls, f"the config of budget {b} is not JSON round-trippable")
    return cls(config)


def _synthetic(out_features: int, in_features: int, seed: int) -> tuple[nn.Linear, LayerStats]:
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=gen) / math.sqrt(in_features))
        linear.bias.copy_(0.1 * torch.randn(out_features, generator=gen))
    X = torch.randn(4 * in_features, in_features, generator=gen, dtype=torch.float64)
    X[:, 0] *= 5.0  # one louder input channel: H is not a multiple of the identity
    return linear, LayerStats(H=X.T @ X / X.shape[0], num_samples=X.shape[0])


def _quantize(cls: type[Quantizer], quantizer: Quantizer, linear: nn.Linear, stats: LayerStats | None,
              seed: int) -> QuantizedLinear:
    before = linear.weight.detach().clone()
    ctx = QuantContext(layer_name="check.linear", block_index=0, generator=torch.Generator().manual_seed(seed),
                       progress=False)
    layer = quantizer.quantize_linear(linear, stats, ctx)
    if not isinstance(layer, QuantizedLinear):
        _fail(cls, f"quantize_linear returned {type(layer).__name__}, not a QuantizedLinear")
    if (layer.out_features, layer.in_features) != (linear.out_features, linear.in_features):
        _fail(cls, f"the packed layer is [{layer.out_features}, {layer.in_features}], the linear "
                   f"[{linear.out_features}, {linear.in_features}]")
    if not torch.equal(linear.weight.detach(), before):
        _fail(cls, "quantize_linear modified the input layer's weight in place")
    return layer.eval()


def _check_bits(cls: type[Quantizer], quantizer: Quantizer, layer: QuantizedLinear, tolerance: float) -> None:
    out_f, in_f = layer.out_features, layer.in_features
    bits, paper = quantizer.bits_for_shape(out_f, in_f)
    if not math.isclose(bits, layer.formula_bits(), rel_tol=1e-9):
        _fail(cls, f"bits_for_shape({out_f}, {in_f}) gives {bits} bits per weight, the packed layer's "
                   f"formula_bits() {layer.formula_bits()}")
    if not math.isclose(paper, layer.paper_bits(), rel_tol=1e-9):
        _fail(cls, f"bits_for_shape({out_f}, {in_f}) gives bits_paper {paper}, the layer's paper_bits() {layer.paper_bits()}")
    state = layer.state_dict()
    counted = 0
    for stored in layer.stored_tensors():
        if stored.name not in state or state[stored.name].shape != stored.tensor.shape:
            _fail(cls, f"stored tensor '{stored.name}' {list(stored.tensor.shape)} is not in the layer's state_dict "
                       f"(a saved model would lose it)")
        counted += stored.tensor.numel() * stored.bits
    measured = counted / layer.num_weights
    if abs(measured - layer.formula_bits()) > tolerance + 1e-9:
        _fail(cls, f"the stored tensors count {measured} bits per weight, formula_bits() says "
                   f"{layer.formula_bits()} (tolerance {tolerance})")


def _inputs(in_features: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 1)
    return [torch.randn(3, in_features, generator=gen), torch.randn(2, 40, in_features, generator=gen)]


def _check_forward(cls: type[Quantizer], layer: QuantizedLinear, seed: int) -> None:
    W_hat = layer.dequantize()
    if tuple(W_hat.shape) != (layer.out_features, layer.in_features) or W_hat.dtype != torch.float32:
        _fail(cls, f"dequantize() gives {W_hat.dtype} {list(W_hat.shape)}, not float32 "
                   f"[{layer.out_features}, {layer.in_features}]")
    for x in _inputs(layer.in_features, seed):
        with torch.no_grad():
            y = layer(x)
        expected = x @ W_hat.T + (0 if layer.bias is None else layer.bias.float())
        if y.shape != expected.shape or not torch.allclose(y, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())):
            _fail(cls, f"forward on x {list(x.shape)} (path {layer.path_used()}) disagrees with x Ŵᵀ + b of "
                       f"dequantize(): max |diff| {float((y - expected).abs().max()) if y.shape == expected.shape else 'shape'}")


def _check_reload(cls: type[Quantizer], layer: QuantizedLinear, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        save_quantized(nn.Sequential(layer), f"{tmp}/model", exact=True)
        try:
            reloaded = restore_quantized(nn.Sequential(nn.Identity()), f"{tmp}/model")[0].eval()
        except Exception as exc:  # noqa: BLE001 - any failure to reload breaks the contract
            _fail(cls, f"the saved layer does not reload through harness.checkpoint: {type(exc).__name__}: {exc}")
    if type(reloaded) is not type(layer):
        _fail(cls, f"reloaded as {type(reloaded).__name__}, saved as {type(layer).__name__}")
    if reloaded.formula_bits() != layer.formula_bits() or reloaded.stored_bits() != layer.stored_bits():
        _fail(cls, "the reloaded layer counts other bits than the saved one")
    if not torch.equal(reloaded.dequantize(), layer.dequantize()):
        _fail(cls, "the reloaded layer's dequantize() differs from the saved layer's")
    for x in _inputs(layer.in_features, seed):
        with torch.no_grad():
            if not torch.allclose(reloaded(x), layer(x), rtol=1e-6, atol=1e-6):
                _fail(cls, f"the reloaded layer's forward on x {list(x.shape)} differs from the saved layer's")


def check_quantizer(
    cls: type[Quantizer], *, budget: int | None = None, params: Mapping[str, Any] | None = None,
    shape: tuple[int, int] = (32, 64), bits_tolerance: float = 0.0, seed: int = 0,
) -> None:
    """Check `cls` against the Quantizer contract (module docstring) at `budget`'s preset
    overridden by `params` (keep them small: few iterations), on an [out, in] = `shape` layer.
    `bits_tolerance`: bits per weight the stored tensors may exceed `formula_bits()` by.
    Raises AssertionError naming the first broken promise; returns None when all hold."""
    if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
        raise AssertionError(f"{cls!r} is not a Quantizer subclass")
    quantizer = _check_config(cls, budget, dict(params or {}))
    if not cls.modifies_weights:
        return
    linear, stats = _synthetic(*shape, seed)
    runs = [stats] if cls.requires_calibration else [None, stats]
    for run_stats in runs:
        layer = _quantize(cls, quantizer, linear, run_stats, seed)
        _check_bits(cls, quantizer, layer, bits_tolerance)
        _check_forward(cls, layer, seed)
        _check_reload(cls, layer, seed)
