"""Effective bits per weight, counted from the stored tensors (protocol: "Effective bits per weight").

- `bits`: stored bits of the counted linear layers / their number of weights. A
  `QuantizedLinear` counts its `stored_tensors()`; a counted layer left as `nn.Linear` (or the
  whole unquantized reference) counts `storage_bits` per weight.
- `bits_formula`, `bits_paper`: the layers' `formula_bits()` / `paper_bits()`, weighted by
  their number of weights.
- `model_bits`: every stored bit of the model / the number of weights the original model had.
  Quantized layers count their stored tensors plus their bias at `storage_bits` and `out*in + bias`
  weights; every other parameter and persistent floating-point buffer counts `storage_bits`
  per element, whatever its dtype in memory. Tensors shared by several modules (tied embeddings)
  count once. Non-persistent buffers (rotary `inv_freq`) and integer buffers (index tables)
  are not weights.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from harness.quantizer import QuantizedLinear

__all__ = ["BitsSummary", "LayerBits", "bits_summary", "count_bits", "dir_size_bytes"]


@dataclass(frozen=True)
class LayerBits:
    """Bits of one counted linear layer (weight [out, in])."""

    name: str
    bits: float
    bits_formula: float
    bits_paper: float
    out: int
    inp: int

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bits": self.bits, "bits_formula": self.bits_formula,
                "bits_paper": self.bits_paper, "out": self.out, "in": self.inp}


@dataclass(frozen=True)
class BitsSummary:
    """Model-level bit accounting; see the module docstring for each field."""

    bits: float
    bits_formula: float
    bits_paper: float
    model_bits: float
    quantized_weights: int
    total_weights: int
    layers: list[LayerBits] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = [layer.as_dict() for layer in self.layers]
        return out


def _tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    """Parameters and persistent buffers owned directly by `module`."""
    for param in module._parameters.values():
        if param is not None:
            yield param
    for name, buf in module._buffers.items():
        if buf is not None and name not in module._non_persistent_buffers_set:
            yield buf


class _Seen:
    """Identity of tensors already counted: the object, or its storage on a real device."""

    def __init__(self) -> None:
        self._ids: set[int] = set()
        self._ptrs: set[tuple[str, int, int, tuple[int, ...]]] = set()

    def add(self, t: torch.Tensor) -> bool:
        """Record `t`; False if it (or a tensor on the same memory) was seen before."""
        ptr = t.data_ptr() if t.device.type != "meta" else 0
        key = (str(t.device), ptr, t.numel(), tuple(t.shape))
        if id(t) in self._ids or (ptr and key in self._ptrs):
            return False
        self._ids.add(id(t))
        if ptr:
            self._ptrs.add(key)
        return True


def _layer_bits(name: str, module: nn.Module, storage_bits: int) -> tuple[LayerBits, int, int]:
    """(per-layer record, stored bits, number of weights) of one counted linear layer."""
    if isinstance(module, QuantizedLinear):
        n = module.num_weights
        stored = module.stored_bits()
        record = LayerBits(name, stored / n, float(module.formula_bits()), float(module.paper_bits()),
                           module.out_features, module.in_features)
    elif isinstance(module, nn.Linear):
        n = module.weight.numel()
        stored = n * storage_bits
        record = LayerBits(name, float(storage_bits), float(storage_bits), float(storage_bits),
                           module.out_features, module.in_features)
    else:
        raise ValueError(
            f"count_bits: module '{name}' is a {type(module).__name__}, not a linear layer; "
            f"pass only nn.Linear / QuantizedLinear names in `linear_names`"
        )
    return record, stored, n


def bits_summary(
    model: nn.Module, *, storage_bits: int = 16, linear_names: list[str] | None = None
) -> BitsSummary:
    """Count the bits of `model` (works on meta-device models too).

    linear_names: the linear layers to report in `bits` (the block linears a method was asked
      to quantize). Default: every `QuantizedLinear`; if the model has none (the unquantized
      reference), every `nn.Linear`.
    storage_bits: bits per element of every unquantized tensor (16: a float16/bfloat16 checkpoint).
    """
    modules = dict(model.named_modules())
    quantized = {n for n, m in modules.items() if isinstance(m, QuantizedLinear)}
    if linear_names is None:
        names = sorted(quantized) or [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    else:
        missing = [n for n in linear_names if n not in modules]
        if missing:
            raise ValueError(f"count_bits: `linear_names` has modules the model lacks: {missing[:5]}")
        names = list(linear_names)

    layers: list[LayerBits] = []
    stored_sum = weight_sum = 0
    formula_sum = paper_sum = 0.0
    for name in names:
        record, stored, n = _layer_bits(name, modules[name], storage_bits)
        layers.append(record)
        stored_sum += stored
        weight_sum += n
        formula_sum += record.bits_formula * n
        paper_sum += record.bits_paper * n

    seen = _Seen()
    model_stored = model_weights = 0
    inside_quantized: set[int] = set()
    for name in quantized:
        layer = modules[name]
        for sub in layer.modules():
            inside_quantized.add(id(sub))
        model_stored += layer.stored_bits()
        model_weights += layer.num_weights
        bias = getattr(layer, "bias", None)
        if isinstance(bias, torch.Tensor) and seen.add(bias):
            model_stored += bias.numel() * storage_bits
            model_weights += bias.numel()
    for module in modules.values():
        if id(module) in inside_quantized:
            continue
        for t in _tensors(module):
            if not (t.is_floating_point() or t.is_complex()) or not seen.add(t):
                continue
            model_stored += t.numel() * storage_bits
            model_weights += t.numel()

    def ratio(a: float, b: int) -> float:
        return a / b if b else float("nan")

    return BitsSummary(
        bits=ratio(stored_sum, weight_sum),
        bits_formula=ratio(formula_sum, weight_sum),
        bits_paper=ratio(paper_sum, weight_sum),
        model_bits=ratio(model_stored, model_weights),
        quantized_weights=weight_sum,
        total_weights=model_weights,
        layers=layers,
    )


def count_bits(
    model: nn.Module, *, storage_bits: int = 16, linear_names: list[str] | None = None
) -> dict[str, Any]:
    """`bits_summary(...)` as a JSON-able dict: bits, bits_formula, bits_paper, model_bits,
    quantized_weights, total_weights, layers [{name, bits, bits_formula, bits_paper, out, in}]."""
    return bits_summary(model, storage_bits=storage_bits, linear_names=linear_names).as_dict()


def dir_size_bytes(path: str | os.PathLike[str]) -> int:
    """Total size in bytes of the regular files under `path` (or of the file `path`); links
    are not followed."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"dir_size_bytes: '{root}' does not exist")
    if root.is_file():
        return root.stat().st_size
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for fname in filenames:
            p = Path(dirpath) / fname
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total
