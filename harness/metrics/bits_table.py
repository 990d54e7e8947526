"""Bits of a method config on a model, from the model's config alone (`harness bits`).

The model is built on the meta device (`harness.models.shapes`); its block linears (the layers
a suite quantizes, as listed by the family adapter) are grouped by shape, and each shape's bits
come from the method's closed form `Quantizer.bits_for_shape(out, in) -> (bits, bits_paper)`.
Totals follow `harness.metrics.bits`: `bits` / `bits_paper` are averages over the quantized
weights; `model_bits` counts every parameter and persistent floating-point buffer (tied
tensors once), non-quantized ones at `storage_bits`, quantized linears at their bits (their
biases at `storage_bits`), over the number of elements of the original model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from harness.errors import HarnessError
from harness.quantizer import Quantizer

__all__ = ["BitsTable", "ShapeBits", "bits_table", "make_quantizer", "shape_bits"]


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

    @property
    def weights(self) -> int:
        return self.count * self.out * self.inp


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
        out = asdict(self)
        out["shapes"] = [{**asdict(s), "in": s.inp} for s in self.shapes]
        for s in out["shapes"]:
            del s["inp"]
        return out


def make_quantizer(method: str, budget: int | None = None, params: dict[str, Any] | None = None) -> Quantizer:
    """The registered method `method` with its `budget` preset (if any) overridden by `params`."""
    from harness.registry import get_method

    cls = get_method(method)
    base: dict[str, Any] = {}
    if budget is not None:
        try:
            base = dict(cls.presets(budget))
        except ValueError as exc:
            raise HarnessError(f"--budget {budget}: {exc}") from exc
    return cls(cls.Config(**{**base, **(params or {})}))


def shape_bits(quantizer: Quantizer, out_features: int, in_features: int, storage_bits: int = 16) -> tuple[float, float]:
    """(bits, bits_paper) per weight of an [out, in] linear under `quantizer`."""
    if not quantizer.modifies_weights:
        return float(storage_bits), float(storage_bits)
    try:
        bits, paper = quantizer.bits_for_shape(out_features, in_features)
    except NotImplementedError:
        pending = _PENDING.get(quantizer.name)
        if pending is None:
            raise HarnessError(
                f"method '{quantizer.name}' has no closed-form bits: implement "
                f"`bits_for_shape(out_features, in_features) -> (bits, bits_paper)` on its Quantizer"
            ) from None
        bits, paper = pending(quantizer, out_features, in_features)
    except ValueError as exc:
        raise HarnessError(f"method '{quantizer.name}' cannot quantize a [{out_features}, {in_features}] linear: {exc}") from exc
    return float(bits), float(paper)


def _aqlm_bits(quantizer: Any, out_features: int, in_features: int) -> tuple[float, float]:
    """AQLM's closed form, until `AQLMQuantizer.bits_for_shape` exists (methods/aqlm is being
    edited elsewhere); delete this shim then."""
    from methods.aqlm.layer import aqlm_formula_bits

    cfg = quantizer.config
    if in_features % cfg.in_group_size:
        raise HarnessError(f"aqlm: in_group_size={cfg.in_group_size} does not divide in_features={in_features}")
    value = aqlm_formula_bits(out_features, in_features, cfg.in_group_size, [cfg.nbits_per_codebook] * cfg.num_codebooks)
    return value, value


#: Temporary closed forms of methods whose Quantizer lacks `bits_for_shape` (see `_aqlm_bits`).
_PENDING = {"aqlm": _aqlm_bits}


def _elements(model: nn.Module) -> dict[int, tuple[str, int]]:
    """id -> (name, numel) of every parameter and persistent floating buffer, tied ones once."""
    seen: dict[int, tuple[str, int]] = {}
    for module_name, module in model.named_modules():
        tensors = list(module._parameters.items()) + [
            (n, b) for n, b in module._buffers.items() if n not in module._non_persistent_buffers_set
        ]
        for name, t in tensors:
            if t is None or not (t.is_floating_point() or t.is_complex()) or id(t) in seen:
                continue
            seen[id(t)] = (f"{module_name}.{name}" if module_name else name, t.numel())
    return seen


def bits_table(
    model: str, method: str, *, budget: int | None = None, params: dict[str, Any] | None = None,
    storage_bits: int = 16,
) -> BitsTable:
    """The bits table of `method` (preset `budget`, then `params`) on `model` (a shape preset,
    the embedded alias, a config.json / model directory, or a hub id with a cached config)."""
    from harness.models.adapters import get_adapter, iter_block_linears
    from harness.models.shapes import meta_model, resolve_config

    quantizer = make_quantizer(method, budget, params)
    config, source = resolve_config(model)
    lm = meta_model(config)
    adapter = get_adapter(lm)
    groups: dict[tuple[int, int], tuple[list[str], list[nn.Linear]]] = {}
    prefix = f"{adapter.blocks_path}."
    for name, _, linear in iter_block_linears(lm, adapter):
        names, layers = groups.setdefault((linear.out_features, linear.in_features), ([], []))
        short = name.removeprefix(prefix).split(".", 1)[1]
        if short not in names:
            names.append(short)
        layers.append(linear)

    shapes: list[ShapeBits] = []
    q_weights = 0
    q_bits = q_paper = 0.0
    replaced: set[int] = set()
    for (out_f, in_f), (names, layers) in groups.items():
        bits, paper = shape_bits(quantizer, out_f, in_f, storage_bits)
        row = ShapeBits(names, len(layers), out_f, in_f, bits, paper)
        shapes.append(row)
        q_weights += row.weights
        q_bits += bits * row.weights
        q_paper += paper * row.weights
        replaced.update(id(layer.weight) for layer in layers)

    elements = _elements(lm)
    total = sum(n for _, n in elements.values())
    other = sum(n for key, (_, n) in elements.items() if key not in replaced)
    model_bits = (q_bits + other * storage_bits) / total if total else float("nan")
    resolved = quantizer.config.model_dump(mode="json")
    return BitsTable(
        model=model, source=source, method=method, params=resolved,
        bits=q_bits / q_weights if q_weights else float("nan"),
        bits_paper=q_paper / q_weights if q_weights else float("nan"),
        model_bits=model_bits, quantized_weights=q_weights, total_weights=total, shapes=shapes,
    )
