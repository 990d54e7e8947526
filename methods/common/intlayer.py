"""`GroupIntLinear`: integer codes with a per-(group, output) scale and zero point, stored in
the standard GPTQ checkpoint layout. Used by RTN and GPTQ.

Weight model: `W[o, i] = (code[o, i] - zero[g(i), o]) * scale[g(i), o]` where `g(i)` is the
group of input column `i` (`i // group_size`, or `g_idx[i]` after an act-order permutation).

Buffers (the GPTQ layout):
  qweight  int32 [ceil(in*bits/32), out]  codes packed along the input dim (LSB-first stream)
  qzeros   int32 [G, ceil(out*bits/32)]   zero points packed along the output dim
  scales   float16 [G, out]
  g_idx    int32 [in]                     only when `has_g_idx` (act-order)
  bias     (optional) the original bias, in its dtype

Forward (the path taken is in `last_path`): decode-sized calls (up to `kernel_max_tokens`
tokens) run packed kernels — on CUDA the Triton low-bit GEMV over this very layout
(`kernels.py`), on CPU in bfloat16 torch's packed int4 matmul (`int4pack_plan`, bits <= 4);
everything else (CPU float32, many tokens) multiplies by the dense weight, dequantized once
and cached. On this CPU (AVX-512, no float32 low-bit kernel in torch) the cached dense weight
is the fastest float32 path; the int4 kernel is ~2x faster than a dense bfloat16 matmul.

Zero points are stored as the true zero ("v2" convention of GPTQModel). AutoGPTQ's legacy
"v1" checkpoints store `zero - 1` instead; `to_gptq_state_dict(v1=True)` converts. Symmetric
layers store the fixed zero `2**(bits-1)` like GPTQ does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.plugin import QuantizedLinear, StoredTensor
from methods.common.packing import MAX_BITS, pack_rows, packed_length, unpack_rows
from methods.common.triton_support import guarded_launch, kernels_usable

__all__ = ["GroupIntLinear", "int4pack_plan"]

#: Group sizes torch's CPU int4 kernel (`_weight_int4pack_mm_for_cpu`) accepts.
_INT4PACK_GROUPS = (32, 64, 128, 256)


@dataclass
class Int4PackPlan:
    """The layer repacked for torch's CPU int4 matmul: 4-bit values q as uint8 [out, in/2] and
    per-group (scale, offset) [G, out, 2] in the activation dtype with
    (q - 8) * scale + offset = (code - zero) * scale — q = code - zero + 8 and offset 0 where that
    fits 4 bits, else q = code and offset (8 - zero) * scale — and the input gather sorting
    act-order columns into contiguous groups (None without `g_idx`)."""

    packed: torch.Tensor
    scale_zeros: torch.Tensor
    group: int
    perm: torch.Tensor | None


def int4pack_plan(layer: "GroupIntLinear", dtype: torch.dtype) -> Int4PackPlan | None:
    """The int4pack plan of `layer` for activations of `dtype`, or None when the kernel does not
    fit (more than 4 bits, a group size it does not take, out not a multiple of 16, act-order
    groups of unequal size)."""
    gs, groups = layer.effective_group_size, layer.num_groups
    if layer.bits > 4 or gs not in _INT4PACK_GROUPS or gs * groups != layer.in_features or layer.out_features % 16:
        return None
    codes, perm = layer.codes(), None
    if layer.g_idx is not None:
        g = layer.g_idx.long()
        if not bool((torch.bincount(g, minlength=groups) == gs).all()):
            return None
        perm = torch.argsort(g, stable=True)
        codes = codes[:, perm]
    zeros, scales = layer.zeros(), layer.scales.float()
    group = torch.arange(layer.in_features) // gs  # after the act-order gather groups are contiguous
    shifted = codes - zeros.T[:, group] + 8
    if bool(((shifted >= 0) & (shifted < 16)).all()):
        # (code - zero + 8) fits 4 bits (always for <= 3 bits): offset 0, so the only rounding
        # is the scale's (a bfloat16 offset would cancel against (code - 8) * scale)
        codes, offsets = shifted, torch.zeros_like(scales)
    else:
        offsets = (8 - zeros.float()) * scales
    scale_zeros = torch.stack([scales, offsets], -1).to(dtype).contiguous()
    packed = torch._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
    return Int4PackPlan(packed, scale_zeros, gs, perm)


class GroupIntLinear(QuantizedLinear):
    """Packed integer group-quantized linear layer (see the module docstring for the layout).

    `forward` runs the packed kernels for decode-sized calls (see `forward`); otherwise it
    dequantizes once and caches the dense weight per (dtype, device). Caches and kernel plans
    are dropped on `load_state_dict` and on `.to()`/`.cuda()`/`.half()`. Set
    `cache_dequantized = False` on an instance (or subclass) to trade speed for memory. `scales`
    stay float16 (the stored format) whatever dtype the module is cast to; the bias follows.
    """

    compute_path = "dequantize+matmul"
    cache_dequantized: bool = True
    #: Most tokens served by the packed kernels (decode batches); more use the dense weight.
    kernel_max_tokens: int = 16

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bits: int,
        group_size: int,
        symmetric: bool = False,
        has_g_idx: bool = False,
        bias: torch.Tensor | None = None,
    ):
        super().__init__(in_features, out_features, bias)
        if isinstance(bits, bool) or not 1 <= int(bits) <= MAX_BITS:
            raise ValueError(f"GroupIntLinear: bits must be in 1..{MAX_BITS}, got {bits!r}")
        if group_size != -1 and group_size < 1:
            raise ValueError(
                f"GroupIntLinear: group_size must be -1 (one group per row) or positive, got {group_size}"
            )
        self.bits = int(bits)
        self.group_size = int(group_size)
        self.symmetric = bool(symmetric)
        self.has_g_idx = bool(has_g_idx)
        groups = self.num_groups
        self.register_buffer(
            "qweight", torch.zeros(packed_length(in_features, bits), out_features, dtype=torch.int32)
        )
        self.register_buffer(
            "qzeros", torch.zeros(groups, packed_length(out_features, bits), dtype=torch.int32)
        )
        self.register_buffer("scales", torch.zeros(groups, out_features, dtype=torch.float16))
        g_idx = torch.zeros(in_features, dtype=torch.int32) if has_g_idx else None
        self.register_buffer("g_idx", g_idx)
        self._cache: tuple[tuple[torch.dtype, torch.device], torch.Tensor] | None = None
        self._plans: dict[tuple[str, torch.dtype, torch.device], Any] = {}

    # ----------------------------------------------------------------------------- geometry
    @property
    def effective_group_size(self) -> int:
        """Input columns per group (`in_features` when `group_size == -1`)."""
        return self.in_features if self.group_size == -1 else self.group_size

    @property
    def num_groups(self) -> int:
        """G = ceil(in / effective_group_size)."""
        return -(-self.in_features // self.effective_group_size)

    def group_index(self) -> torch.Tensor:
        """Group of each input column: int64 [in]."""
        if self.g_idx is not None:
            return self.g_idx.long()
        return torch.arange(self.in_features, device=self.qweight.device) // self.effective_group_size

    # ------------------------------------------------------------------------ construction
    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        *,
        bits: int,
        group_size: int,
        symmetric: bool = False,
        g_idx: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> "GroupIntLinear":
        """Pack a quantized weight.

        codes: int [out, in] in [0, 2**bits); scales: float [G, out] (stored as float16; pass
        float16-representable values for an exact round trip); zeros: int [G, out] in
        [0, 2**bits); g_idx: int [in] group of each input column (act-order only), else None.
        """
        out_features, in_features = codes.shape
        layer = cls(
            in_features, out_features, bits=bits, group_size=group_size, symmetric=symmetric,
            has_g_idx=g_idx is not None, bias=bias,
        )
        expected = (layer.num_groups, out_features)
        if tuple(scales.shape) != expected or tuple(zeros.shape) != expected:
            raise ValueError(
                f"{cls.__name__}.from_codes: scales and zeros must have shape [G, out] = "
                f"{list(expected)}, got {list(scales.shape)} and {list(zeros.shape)}"
            )
        device = codes.device
        layer.qweight = pack_rows(codes.t(), bits, dim=0)
        layer.qzeros = pack_rows(zeros, bits, dim=1)
        layer.scales = scales.detach().to(device=device, dtype=torch.float16).contiguous()
        if g_idx is not None:
            if tuple(g_idx.shape) != (in_features,):
                raise ValueError(
                    f"{cls.__name__}.from_codes: g_idx must have shape [in] = [{in_features}], "
                    f"got {list(g_idx.shape)}"
                )
            layer.g_idx = g_idx.detach().to(device=device, dtype=torch.int32).contiguous()
        if layer.bias is not None:
            layer.bias = layer.bias.to(device)
        return layer

    def format_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric, "has_g_idx": self.has_g_idx}

    # --------------------------------------------------------------------------- weights
    def codes(self) -> torch.Tensor:
        """Unpacked codes: int32 [out, in]."""
        return unpack_rows(self.qweight, self.bits, self.in_features, dim=0).t()

    def zeros(self) -> torch.Tensor:
        """Unpacked zero points: int32 [G, out]."""
        return unpack_rows(self.qzeros, self.bits, self.out_features, dim=1)

    def dequantize(self) -> torch.Tensor:
        """Dense weight [out, in] float32: (code - zero[g]) * scale[g]."""
        codes = unpack_rows(self.qweight, self.bits, self.in_features, dim=0)  # [in, out]
        zeros = self.zeros()
        scales = self.scales.float()
        gs, groups = self.effective_group_size, self.num_groups
        if self.g_idx is None and groups * gs == self.in_features:
            w = (codes.view(groups, gs, -1) - zeros[:, None, :]).float() * scales[:, None, :]
            w = w.reshape(self.in_features, self.out_features)
        else:
            g = self.group_index()
            w = (codes - zeros[g]).float() * scales[g]
        return w.t().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x Ŵᵀ + b by the fastest path for the call (recorded in `last_path`): up to
        `kernel_max_tokens` tokens, the packed kernels — on CUDA (Triton) the low-bit GEMV
        ("triton-int{bits}-gemv"), on CPU in bfloat16 torch's packed int4 matmul ("int4pack-mm",
        bits <= 4, group size 32/64/128/256); otherwise the dense weight, dequantized once and
        cached ("cached-dense-matmul"; "dequantize+matmul" with `cache_dequantized = False`)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] <= self.kernel_max_tokens:
            y = self._packed_forward(x2)
            if y is not None:
                return y.reshape(*lead, self.out_features)
        key = (x.dtype, x.device)
        if self._cache is not None and self._cache[0] == key:
            weight = self._cache[1]
        else:
            weight = self.dequantize().to(device=x.device, dtype=x.dtype)
            self._cache = (key, weight) if self.cache_dequantized else None
        self.last_path = "cached-dense-matmul" if self.cache_dequantized else "dequantize+matmul"
        bias = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
        return nn.functional.linear(x, weight, bias)

    def _packed_forward(self, x2: torch.Tensor) -> torch.Tensor | None:
        """The packed kernels on x [n, in], or None when none applies to this call."""
        if kernels_usable(x2):
            plan = self._plan("triton", x2)
            if plan is not None:
                from methods.common.kernels import int_gemv

                y = guarded_launch((plan.path, x2.dtype, x2.device.type), lambda: int_gemv(x2, plan))
                if y is not None:
                    self.last_path = plan.path
                    return y
        elif x2.device.type == "cpu" and x2.dtype == torch.bfloat16:
            plan = self._plan("int4pack", x2)
            if plan is not None:
                self.last_path = "int4pack-mm"
                xp = x2 if plan.perm is None else x2.index_select(1, plan.perm)
                y = torch._weight_int4pack_mm_for_cpu(xp.contiguous(), plan.packed, plan.group, plan.scale_zeros)
                return y if self.bias is None else y + self.bias.to(y.dtype)
        return None

    def _plan(self, kind: str, x: torch.Tensor) -> Any:
        """A kernel plan for (kind, dtype, device), built once; None when the kernel does not fit."""
        key = (kind, x.dtype, x.device)
        if key not in self._plans:
            if kind == "triton":
                from methods.common.kernels import int_plan

                self._plans[key] = int_plan(self)
            else:
                self._plans[key] = int4pack_plan(self, x.dtype)
        return self._plans[key]

    def _apply(self, fn, recurse: bool = True):
        scales = self.scales
        result = super()._apply(fn, recurse)
        if self.scales.dtype != torch.float16:  # a dtype cast: keep the stored float16 values
            self.scales = scales.to(device=self.scales.device)
        self._cache = None
        self._plans = {}
        return result

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._cache = None
        self._plans = {}

    # ---------------------------------------------------------------------------- bits
    def stored_tensors(self) -> list[StoredTensor]:
        tensors = [
            StoredTensor("qweight", self.qweight, 32),
            StoredTensor("qzeros", self.qzeros, 32),
            StoredTensor("scales", self.scales, 16),
        ]
        if self.g_idx is not None:
            tensors.append(StoredTensor("g_idx", self.g_idx, 32))
        return tensors

    def bytes_read_per_call(self) -> int | None:
        """Bytes the last call's packed kernel read, where they differ from the stored tensors:
        the Triton GEMV reads the packed codes, float16 scales and float32 zero x scale (not the
        packed zeros), g_idx and the bias. None for the other paths (throughput counts those)."""
        if not (self.last_path or "").startswith("triton-int"):
            return None
        total = self.qweight.numel() * 4 + self.scales.numel() * (2 + 4)
        if self.g_idx is not None:
            total += self.g_idx.numel() * 4
        if self.bias is not None:
            total += self.bias.numel() * self.bias.element_size()
        return total

    @staticmethod
    def group_int_bits(out_features: int, in_features: int, bits: int, group_size: int, has_g_idx: bool) -> float:
        """Bits per weight of the format: bits + (16-bit scale + bits-bit zero) per group of one
        row, groups = ceil(in / group_size) (one per row for -1), + 32-bit g_idx per column."""
        groups = -(-in_features // (in_features if group_size == -1 else group_size))
        value = bits + (16 + bits) * groups / in_features
        if has_g_idx:
            value += 32 / out_features
        return value

    @classmethod
    def bits_per_weight(cls, shape: tuple[int, int], config: Any) -> tuple[float, float]:
        """`group_int_bits` for `config.bits` and `config.group_size`, without g_idx (methods
        that store one override this); papers count the same."""
        value = cls.group_int_bits(*shape, config.bits, config.group_size, has_g_idx=False)
        return value, value

    def formula_bits(self) -> float:
        """`group_int_bits` of this layer."""
        return self.group_int_bits(self.out_features, self.in_features, self.bits, self.group_size, self.has_g_idx)

    # -------------------------------------------------------------------------- export
    def to_gptq_state_dict(self, v1: bool = True) -> dict[str, torch.Tensor]:
        """Tensors in the GPTQ checkpoint layout, with `g_idx` always present (AutoGPTQ expects it).

        v1=True: AutoGPTQ's legacy convention, qzeros hold `zero - 1`; it cannot represent a
        zero point of 0 (raises ValueError: export with v1=False, GPTQModel's `gptq_v2`).
        The bias is exported as float16.
        """
        qzeros = self.qzeros
        if v1:
            zeros = self.zeros()
            if bool((zeros == 0).any()):
                raise ValueError(
                    "to_gptq_state_dict: a zero point of 0 cannot be stored in AutoGPTQ's v1 "
                    "format (it stores zero-1); export with v1=False (checkpoint_format gptq_v2)"
                )
            qzeros = pack_rows(zeros - 1, self.bits, dim=1)
        out = {
            "qweight": self.qweight.clone(),
            "qzeros": qzeros.clone(),
            "scales": self.scales.clone(),
            "g_idx": self.group_index().to(torch.int32),
        }
        if self.bias is not None:
            out["bias"] = self.bias.to(torch.float16)
        return out

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, bits={self.bits}, group_size={self.group_size}, "
            f"symmetric={self.symmetric}, g_idx={self.has_g_idx}"
        )
