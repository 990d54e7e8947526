"""The method contract: `Quantizer` (a typed config plus per-layer quantization) and
`QuantizedLinear` (the packed layer a method returns).

The engine (`harness/`) sees only these two classes. A method lives in its own folder
under `methods/` (or in a third-party package) and is registered under a name.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer
from torch import nn


class MethodConfig(BaseModel):
    """Base class of every method's config: frozen, unknown keys are errors.

    `late_fields` names fields added after results existed: the dump (a cell's resolved
    `params`) leaves them out while they hold their default, so the record keys of cells that
    do not set them stay what they were.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    late_fields: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_late_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in self.late_fields:
            if name in data and getattr(self, name) == type(self).model_fields[name].default:
                del data[name]
        return data


@dataclass(frozen=True)
class StoredTensor:
    """One tensor a quantized layer stores, with the number of bits each element occupies.

    `bits` is the storage width of one element of `tensor` as stored (e.g. 32 for an int32
    word that packs sixteen 2-bit codes, 16 for a float16 scale).
    """

    name: str
    tensor: torch.Tensor
    bits: int

    @property
    def total_bits(self) -> int:
        return int(self.tensor.numel()) * int(self.bits)


@dataclass
class LayerStats:
    """Calibration statistics of one linear layer's input.

    H: [in, in] float64, mean over calibration tokens of x xᵀ (the "half Hessian").
    num_samples: number of tokens the mean was taken over.
    """

    H: torch.Tensor
    num_samples: int


@dataclass
class QuantContext:
    """What a method is told about the layer it is quantizing.

    generator: a seeded CPU generator; methods draw every random choice from it
    (library code never reseeds the global RNGs). `log` collects per-layer records the
    engine stores in the cell record (e.g. final relative error, epochs, seconds).
    """

    layer_name: str
    block_index: int
    generator: torch.Generator
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    log: list[dict[str, Any]] = field(default_factory=list)


class QuantizedLinear(nn.Module, ABC):
    """A packed replacement for `nn.Linear` with `in_features` inputs and `out_features` outputs.

    Subclasses store their tensors as buffers (so `state_dict` saves them) and implement:
    `forward(x)` with x [..., in] -> [..., out] in x's dtype; `dequantize()` -> dense weight
    [out, in] float32; `stored_tensors()` -> every tensor the format stores with its bit width
    (bias excluded: it is counted in model bits); `formula_bits()` -> the method's closed-form
    bits per weight; `format_config()` -> the JSON-able constructor kwargs of the format besides
    `in_features`, `out_features` and `bias` (the default `layer_config` / `from_layer_config`
    save and rebuild an empty layer from them, whose `load_state_dict` restores it).
    `bits_per_weight(shape, config)` (a classmethod) is the format's closed form for a method
    config without weights; `formula_bits()` and it share one formula.

    Compute path (for throughput records): `compute_path` names the layer's nominal path; a
    `forward` that dispatches between kernels (device, dtype, number of tokens) sets
    `last_path` to the path the call actually took (e.g. "triton-aqlm-gemv", "aqlm-lookup",
    "dequantize+matmul"). `reference_forward(x)` is the dequantized reference every fast path
    is checked against: `F.linear(x, dequantize())` in x's dtype.
    """

    compute_path: str = "dequantize+matmul"
    #: The path the most recent `forward` took (None before the first call).
    last_path: str | None = None

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        if bias is not None:
            self.register_buffer("bias", bias.detach().clone())
        else:
            self.bias = None

    @abstractmethod
    def dequantize(self) -> torch.Tensor:
        """Dense weight [out, in], float32."""

    @abstractmethod
    def stored_tensors(self) -> list[StoredTensor]:
        """Every stored tensor of the format (codes, codebooks, scales, zeros, permutations)."""

    @abstractmethod
    def formula_bits(self) -> float:
        """The method's analytic bits per weight for this layer (cross-check of `measured_bits`)."""

    def paper_bits(self) -> float:
        """Bits per weight as the method's paper counts them (defaults to `formula_bits`)."""
        return self.formula_bits()

    @classmethod
    def bits_per_weight(cls, shape: tuple[int, int], config: MethodConfig) -> tuple[float, float]:
        """Closed-form (bits, bits_paper) per weight of the [out, in] = `shape` layer a method with
        `config` packs into this class, without weights: `formula_bits()` and `paper_bits()` of
        such a layer. Raise ValueError when `config` cannot quantize the shape."""
        raise NotImplementedError(f"{cls.__name__} has no closed-form bits (`bits_per_weight`)")

    def format_config(self) -> dict[str, Any]:
        """JSON-able constructor kwargs of the format besides in/out features and bias (e.g.
        bits, group size): `cls(in_features, out_features, bias=..., **format_config())` builds
        an empty layer with the right buffer shapes."""
        raise NotImplementedError(f"{type(self).__name__} defines neither `format_config` nor `layer_config`")

    def layer_config(self) -> dict[str, Any]:
        """JSON-able constructor arguments for `from_layer_config` (stored with a saved model)."""
        bias = None if self.bias is None else str(self.bias.dtype).removeprefix("torch.")
        return {"in_features": self.in_features, "out_features": self.out_features, **self.format_config(),
                "bias_dtype": bias}

    @classmethod
    def from_layer_config(cls, config: dict[str, Any]) -> "QuantizedLinear":
        """An empty layer with the right buffer shapes, to be filled by `load_state_dict`."""
        cfg = dict(config)
        bias_dtype = cfg.pop("bias_dtype", None)
        in_f, out_f = cfg.pop("in_features"), cfg.pop("out_features")
        bias = None if bias_dtype is None else torch.zeros(out_f, dtype=getattr(torch, bias_dtype))
        return cls(in_f, out_f, bias=bias, **cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_path = "dequantize+matmul"
        return self.reference_forward(x)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The dequantized reference: x Ŵᵀ + b with Ŵ = `dequantize()` cast to x's dtype
        (built for this call only). x [..., in] -> [..., out] in x's dtype."""
        weight = self.dequantize().to(device=x.device, dtype=x.dtype)
        bias = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
        return torch.nn.functional.linear(x, weight, bias)

    def trainable_buffers(self) -> list[str]:
        """Names of the floating-point buffers that fine-tuning may tune as continuous parameters
        (e.g. codebooks and scales; never codes or permutations). Default: none."""
        return []

    def buffers_changed(self) -> None:
        """Called after tuned buffers were written back: drop anything cached from them."""
        return None

    def path_used(self) -> str:
        """The path of the most recent forward, or `compute_path` before any call."""
        return self.last_path or self.compute_path

    @property
    def num_weights(self) -> int:
        return self.in_features * self.out_features

    def stored_bits(self) -> int:
        """Total stored bits of the layer's weight representation."""
        return sum(t.total_bits for t in self.stored_tensors())

    def measured_bits(self) -> float:
        """Stored bits per weight, counted from the actual stored tensors."""
        return self.stored_bits() / self.num_weights

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, path={self.compute_path}"


def layer_class_path(layer: QuantizedLinear) -> str:
    cls = type(layer)
    return f"{cls.__module__}:{cls.__qualname__}"


def import_layer_class(path: str) -> type[QuantizedLinear]:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


class Quantizer(ABC):
    """A quantization method: a typed `Config` plus `quantize_linear`.

    Class attributes declare the method's needs:
      name: registry name (e.g. "rtn").
      Config: a `MethodConfig` subclass validated from the suite's `params`.
      budget_presets: nominal bit budget -> params (what `presets` returns).
      requires_calibration: True if `quantize_linear` needs `LayerStats` (the engine then runs
        the sequential calibration pipeline); False for data-free methods such as RTN.
      layer_class: the `QuantizedLinear` subclass it returns (its closed-form bits).
      modifies_weights: False only for the unquantized reference (`none`).
      required_packages: import names checked by `validate_environment`.
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    #: The packed layer class `quantize_linear` returns; its `bits_per_weight` is `bits_for_shape`.
    layer_class: ClassVar[type[QuantizedLinear] | None] = None
    requires_calibration: ClassVar[bool] = False
    modifies_weights: ClassVar[bool] = True
    required_packages: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: MethodConfig):
        self.config = config

    #: Nominal bit budget -> params: the default `presets`.
    budget_presets: ClassVar[dict[int, dict[str, Any]]] = {}
    #: The end of the error for a budget without a preset (which explicit params to give).
    preset_hint: ClassVar[str] = "give explicit `params`"

    @classmethod
    def presets(cls, budget: int) -> dict[str, Any]:
        """Params for a nominal bit budget (1, 2, 3, 4, 8): a copy of `budget_presets[budget]`.
        Raise ValueError for unsupported ones."""
        if budget not in cls.budget_presets:
            supported = ", ".join(map(str, cls.budget_presets)) or "none"
            raise ValueError(
                f"method '{cls.name}' has no preset for a {budget}-bit budget (supported: {supported}); {cls.preset_hint}"
            )
        return dict(cls.budget_presets[budget])

    @classmethod
    def default_label(cls, config: MethodConfig) -> str:
        """The method label of a suite line that gives no `label`: the registry name, unless the
        method says which variant of its algorithm `config` runs (e.g. `aqlm-harness`), so that
        tables and plots never show a variant under the published algorithm's name."""
        return cls.name

    @classmethod
    def supported_budgets(cls) -> list[int]:
        out = []
        for b in (1, 2, 3, 4, 8):
            try:
                cls.presets(b)
            except ValueError:
                continue
            out.append(b)
        return out

    @classmethod
    def validate_environment(cls) -> None:
        """Fail early (ImportError with the pip command) if a required package is missing."""
        for pkg in cls.required_packages:
            try:
                importlib.import_module(pkg)
            except ImportError as exc:
                raise ImportError(
                    f"method '{cls.name}' needs the package '{pkg}': install it with `pip install {pkg}`"
                ) from exc

    @abstractmethod
    def quantize_linear(
        self, linear: nn.Linear, stats: LayerStats | None, ctx: QuantContext
    ) -> QuantizedLinear:
        """Quantize one linear layer.

        linear: the layer, weight [out, in] (any float dtype; do not modify it in place).
        stats: input statistics (None when `requires_calibration` is False).
        Returns a `QuantizedLinear` computing the same function as the quantized weight.
        """

    def finetunes_blocks(self) -> bool:
        """Whether `finetune_block` does anything for this config (the pipeline then keeps the
        full-precision block outputs as targets). Default: True iff the method overrides it."""
        return type(self).finetune_block is not Quantizer.finetune_block

    def finetune_block(
        self, block: nn.Module, inputs: Any, targets: Any, ctx: QuantContext
    ) -> None:
        """Optional: tune a block's quantized parameters after its linears were replaced.

        inputs: `harness.plugin.BlockData` — `inputs.hidden` [n, seqlen, hidden] float32 (the
          block's calibration inputs), `inputs.batches()` / `inputs.run(block, hidden, kwargs)`
          to call the block with the model's kwargs (position embeddings, masks).
        targets: [n, seqlen, hidden] float32, the full-precision block's outputs on `inputs`.
        Must leave the block in eval mode with its packed layers' buffers updated.
        """
        return None

    def bits_for_shape(self, out_features: int, in_features: int) -> tuple[float, float]:
        """Closed-form (bits, bits_paper) per weight of an [out, in] linear under this config,
        computed without weights (for `harness bits` on shapes-only models): `bits` counts every
        stored tensor as `formula_bits()` of the packed layer does, `bits_paper` as the method's
        paper does (`paper_bits()`). Raise ValueError if the shape cannot be quantized (e.g. a
        group size that does not divide `in_features`). Default: `layer_class.bits_per_weight`."""
        if self.layer_class is None:
            raise NotImplementedError(f"method '{self.name}' has no closed-form bits (`bits_for_shape`)")
        return self.layer_class.bits_per_weight((out_features, in_features), self.config)

    def flops_for_shape(self, out_features: int, in_features: int) -> float | None:
        """Expected floating-point operations of `quantize_linear` on an [out, in] linear under
        this config (for the time estimates of `harness run --dry-run`); None = unknown."""
        return None

    def finetune_sequence_passes(self, num_sequences: int) -> float:
        """Expected forward+backward passes of calibration sequences through each block by
        `finetune_block` (sequences x epochs, for time estimates) given `num_sequences`
        calibration sequences; 0 when the config does not fine-tune blocks (the default)."""
        return 0.0
