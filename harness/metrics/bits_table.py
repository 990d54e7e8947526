"""Bits of a method config on a model, from the model's config alone (`harness bits`).

The model is built on the meta device (`harness.models.shapes`); its block linears (the layers
a suite quantizes, as listed by the family adapter) are grouped by shape, and each shape's bits
come from the method's closed form `Quantizer.bits_for_shape(out, in) -> (bits, bits_paper)`.
Totals are `harness.metrics.bits.bits_summary` of the meta model with each block linear
replaced by a stand-in carrying its closed-form bits: `bits` / `bits_paper` are averages over
the quantized weights; `model_bits` counts every parameter and persistent floating-point
buffer (tied tensors once), non-quantized ones at `storage_bits`, quantized linears at their
bits (their biases at `storage_bits`), over the number of elements of the original model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from harness.errors import HarnessError
from harness.metrics.bits import bits_summary
from harness.quantizer import QuantizedLinear, Quantizer
from harness.registry import BudgetError, build_quantizer

__all__ = ["BitsTable", "ShapeBits", "bits_table", "shape_bits"]


@dataclass(frozen=True)
class ShapeBits:
    """One linear shape [out, in] of the model: its layers (names relative to a block), how many
    linears have it, and the bits per weight of each under the method."""

    names: list[str]
    count: int
    out: int
    inp: int
    bits: float
    bits_paper: float

    def as_dict(self) -> dict[str, Any]:
        return {"names": self.names, "count": self.count, "out": self.out, "in": self.inp, "bits": self.bits,
                "bits_paper": self.bits_paper}


@dataclass(frozen=True)
class BitsTable:
    """Bits of `method` (resolved `params`) on `model`; see the module docstring."""

    model: str
    source: str
    method: str
    params: dict[str, Any]
    bits: float
    bits_paper: float
    model_bits: float
    quantized_weights: int
    total_weights: int
    shapes: list[ShapeBits] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shapes": [s.as_dict() for s in self.shapes]}


def shape_bits(quantizer: Quantizer, out_features: int, in_features: int, storage_bits: int = 16) -> tuple[float, float]:
    """(bits, bits_paper) per weight of an [out, in] linear under `quantizer`."""
    if not quantizer.modifies_weights:
        return float(storage_bits), float(storage_bits)
    try:
        bits, paper = quantizer.bits_for_shape(out_features, in_features)
    except NotImplementedError:
        raise HarnessError(
            f"method '{quantizer.name}' has no closed-form bits: implement "
            f"`bits_for_shape(out_features, in_features) -> (bits, bits_paper)` on its Quantizer"
        ) from None
    except ValueError as exc:
        raise HarnessError(f"method '{quantizer.name}' cannot quantize a [{out_features}, {in_features}] linear: {exc}") from exc
    return float(bits), float(paper)


class _ClosedForm(QuantizedLinear):
    """Stand-in for a quantized linear of a shapes-only model: its bits come from the method's
    closed form, so `bits_summary` does the model's accounting (biases, tied tensors, buffers)."""

    def __init__(self, linear: nn.Linear, bits: float, bits_paper: float):
        super().__init__(linear.in_features, linear.out_features, linear.bias)
        self._bits, self._paper = bits, bits_paper

    def stored_bits(self) -> float:  # type: ignore[override]  # closed forms need not be integral
        return self._bits * self.num_weights

    def stored_tensors(self) -> list:
        return []

    def formula_bits(self) -> float:
        return self._bits

    def paper_bits(self) -> float:
        return self._paper

    def dequantize(self):
        raise RuntimeError("a shapes-only layer has no weights")

    def layer_config(self) -> dict[str, Any]:
        raise RuntimeError("a shapes-only layer cannot be saved")

    @classmethod
    def from_layer_config(cls, config: dict[str, Any]) -> "_ClosedForm":
        raise RuntimeError("a shapes-only layer cannot be loaded")


def bits_table(
    model: str, method: str, *, budget: int | None = None, params: dict[str, Any] | None = None,
    storage_bits: int = 16,
) -> BitsTable:
    """The bits table of `method` (preset `budget`, then `params`) on `model` (a shape preset,
    the embedded alias, a config.json / model directory, or a hub id with a cached config)."""
    from harness.models.adapters import get_adapter, iter_block_linears
    from harness.models.shapes import meta_model, resolve_config

    try:
        quantizer = build_quantizer(method, budget, params)
    except BudgetError as exc:
        raise HarnessError(f"--budget {budget}: {exc}") from exc
    config, source = resolve_config(model)
    lm = meta_model(config)
    adapter = get_adapter(lm)
    linears = list(iter_block_linears(lm, adapter))
    groups: dict[tuple[int, int], list[str]] = {}
    counts: dict[tuple[int, int], int] = {}
    for name, _, linear in linears:
        shape = (linear.out_features, linear.in_features)
        short = name.removeprefix(f"{adapter.blocks_path}.").split(".", 1)[1]
        if short not in groups.setdefault(shape, []):
            groups[shape].append(short)
        counts[shape] = counts.get(shape, 0) + 1
    shapes = [ShapeBits(names, counts[shape], *shape, *shape_bits(quantizer, *shape, storage_bits))
              for shape, names in groups.items()]
    if quantizer.modifies_weights:
        by_shape = {(s.out, s.inp): s for s in shapes}
        for name, _, linear in linears:
            row = by_shape[(linear.out_features, linear.in_features)]
            lm.set_submodule(name, _ClosedForm(linear, row.bits, row.bits_paper))
    summary = bits_summary(lm, storage_bits=storage_bits, linear_names=[name for name, _, _ in linears])
    return BitsTable(
        model=model, source=source, method=method, params=quantizer.config.model_dump(mode="json"),
        bits=summary.bits, bits_paper=summary.bits_paper, model_bits=summary.model_bits,
        quantized_weights=summary.quantized_weights, total_weights=summary.total_weights, shapes=shapes,
    )
