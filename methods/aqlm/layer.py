"""`AQLMLinear`: the packed additive-codebook layer, and its export to the `aqlm` package layout.

Weight model: W[o, group j] = s_o · Σ_{m covers j} C_m[codes_m[o, j]] (see `algorithm.py`).

Buffers, per codebook m (covering `groups[m]`, None = all G = in/g input groups):
  codes_{m}     [out, G_m]  uint8 for b_m <= 8, int16 (the 16 bits of the unsigned code,
                            two's complement) for b_m <= 16
  codebook_{m}  [2**b_m, g] float16
and scales [out] float16, bias (optional, in its dtype).

Forward ("aqlm-lookup"): per codebook, the dot products of every input group with every
codebook entry are computed once (T_m [N, G_m, K_m] = x_groups · C_mᵀ), then each output
gathers and sums its codes' entries of the tables (one `index_select` for all codebooks) and
is scaled. The dense weight is not built. For many tokens (above `lookup_max_entries`) the
tables cost more than the weight, and the weight is dequantized for that call only.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.quantizer import QuantizedLinear, StoredTensor

__all__ = ["AQLMLinear", "aqlm_formula_bits", "aqlm_quantization_config"]


def aqlm_formula_bits(
    out_features: int, in_features: int, in_group_size: int, nbits: list[int], covered: list[int] | None = None
) -> float:
    """Bits per weight: (Σ_m out·G_m·b_m + Σ_m 2**b_m·g·16 + out·16) / (out·in), where G_m is
    the number of input groups codebook m covers (default all, in/g). With every codebook over
    all groups this is the spec's (out·in/g·Σ b_m + Σ 2**b_m·g·16 + out·16) / (out·in)."""
    g = in_group_size
    covered = [in_features // g] * len(nbits) if covered is None else covered
    code_bits = sum(out_features * n * b for n, b in zip(covered, nbits))
    book_bits = sum((1 << b) * g * 16 for b in nbits)
    return (code_bits + book_bits + out_features * 16) / (out_features * in_features)


def _code_dtype(nbits: int) -> torch.dtype:
    return torch.uint8 if nbits <= 8 else torch.int16


class AQLMLinear(QuantizedLinear):
    """Additive multi-codebook quantized linear layer (layout in the module docstring).

    nbits: bits per code of each codebook (1..16); groups: per codebook, the input groups it
    covers in the order of its code columns, or None for all (CRVQ's extended codebooks cover a
    subset). The first codebook need not cover all groups here (the algorithm requires it).
    """

    compute_path = "aqlm-lookup"
    #: Largest tokens x Σ_m 2**b_m served by the lookup path (1x8: up to 8 tokens; 2x8: 4;
    #: 1x16: none): measured crossover with dequantize-then-matmul on a 2-core CPU.
    lookup_max_entries: int = 2048

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        in_group_size: int,
        nbits: list[int],
        groups: list[list[int] | None] | None = None,
        bias: torch.Tensor | None = None,
    ):
        super().__init__(in_features, out_features, bias)
        if in_group_size < 1 or in_features % in_group_size:
            raise ValueError(
                f"AQLMLinear: in_group_size={in_group_size} must divide in_features={in_features}"
            )
        if not nbits or any(isinstance(b, bool) or not 1 <= int(b) <= 16 for b in nbits):
            raise ValueError(f"AQLMLinear: nbits must be a non-empty list of integers in 1..16, got {nbits!r}")
        groups = [None] * len(nbits) if groups is None else [None if g is None else list(map(int, g)) for g in groups]
        if len(groups) != len(nbits):
            raise ValueError(f"AQLMLinear: {len(nbits)} codebooks but {len(groups)} group lists")
        self.in_group_size = int(in_group_size)
        self.nbits = [int(b) for b in nbits]
        self.groups = groups
        n_groups = self.num_groups
        for m, (b, grp) in enumerate(zip(self.nbits, groups)):
            if grp is not None and (not grp or min(grp) < 0 or max(grp) >= n_groups or len(set(grp)) != len(grp)):
                raise ValueError(
                    f"AQLMLinear: groups[{m}] must be distinct input groups in [0, {n_groups}), got {grp}"
                )
            width = n_groups if grp is None else len(grp)
            self.register_buffer(f"codes_{m}", torch.zeros(out_features, width, dtype=_code_dtype(b)))
            self.register_buffer(f"codebook_{m}", torch.zeros(1 << b, in_group_size, dtype=torch.float16))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.float16))
        self._table_entries = sum(1 << b for b in self.nbits)
        self._lookup: tuple[torch.Tensor, list[torch.Tensor | None] | None] | None = None

    # ----------------------------------------------------------------------------- geometry
    @property
    def num_codebooks(self) -> int:
        return len(self.nbits)

    @property
    def num_groups(self) -> int:
        """G = in_features / in_group_size."""
        return self.in_features // self.in_group_size

    def codes(self, m: int) -> torch.Tensor:
        """Codes of codebook m as int64 [out, G_m] in [0, 2**b_m)."""
        c = getattr(self, f"codes_{m}").long()
        return c & 0xFFFF if self.nbits[m] > 8 else c

    def codebook(self, m: int) -> torch.Tensor:
        """Codebook m: float16 [2**b_m, g]."""
        return getattr(self, f"codebook_{m}")

    def group_index(self, m: int) -> torch.Tensor | None:
        """Input groups covered by codebook m: int64 [G_m], or None for all."""
        grp = self.groups[m]
        return None if grp is None else torch.tensor(grp, dtype=torch.long, device=self.scales.device)

    # ------------------------------------------------------------------------ construction
    @classmethod
    def from_result(
        cls, codebooks: list[torch.Tensor], codes: list[torch.Tensor], groups: list[torch.Tensor | None],
        nbits: list[int], scales: torch.Tensor, *, in_features: int, bias: torch.Tensor | None = None,
    ) -> "AQLMLinear":
        """Pack codebooks [K_m, g], codes int [out, G_m], groups [G_m] or None, scales [out]
        (as `algorithm.AQLMResult` holds them); codebooks and scales are stored as float16."""
        out_features, g = scales.shape[0], codebooks[0].shape[1]
        layer = cls(
            in_features, out_features, in_group_size=g, nbits=list(nbits),
            groups=[None if grp is None else grp.tolist() for grp in groups], bias=bias,
        )
        for m, (C, c) in enumerate(zip(codebooks, codes)):
            want = list(getattr(layer, f"codes_{m}").shape)
            if list(C.shape) != [1 << layer.nbits[m], g] or list(c.shape) != want:
                raise ValueError(
                    f"AQLMLinear.from_result: codebook {m} has shape {list(C.shape)} and codes "
                    f"{list(c.shape)}; expected {[1 << layer.nbits[m], g]} and {want}"
                )
            setattr(layer, f"codes_{m}", c.detach().to(torch.int32).to(_code_dtype(layer.nbits[m])).cpu())
            setattr(layer, f"codebook_{m}", C.detach().to(torch.float16).cpu().contiguous())
        layer.scales = scales.detach().to(torch.float16).cpu().contiguous()
        return layer

    def layer_config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "in_group_size": self.in_group_size,
            "nbits": list(self.nbits),
            "groups": [None if g is None else list(g) for g in self.groups],
            "bias_dtype": None if self.bias is None else str(self.bias.dtype).removeprefix("torch."),
        }

    @classmethod
    def from_layer_config(cls, config: dict[str, Any]) -> "AQLMLinear":
        cfg = dict(config)
        bias_dtype = cfg.pop("bias_dtype", None)
        in_f, out_f = cfg.pop("in_features"), cfg.pop("out_features")
        bias = None if bias_dtype is None else torch.zeros(out_f, dtype=getattr(torch, bias_dtype))
        return cls(in_f, out_f, bias=bias, **cfg)

    # --------------------------------------------------------------------------- weights
    def dequantize(self) -> torch.Tensor:
        """Dense weight [out, in] float32: s_o · Σ_m C_m[codes_m]."""
        B = torch.zeros(self.out_features, self.num_groups, self.in_group_size, device=self.scales.device)
        for m in range(self.num_codebooks):
            vectors = F.embedding(self.codes(m), self.codebook(m).float())
            grp = self.group_index(m)
            if grp is None:
                B += vectors
            else:
                B[:, grp] += vectors
        return self.scales.float()[:, None] * B.reshape(self.out_features, self.in_features)

    def _lookup_plan(self) -> tuple[torch.Tensor, list[torch.Tensor | None] | None]:
        """(index, groups): index [Σ_m G_m · out] holds, group-major, the position of every
        output's entry in the concatenated lookup tables; groups is None when every codebook
        covers all groups with one bit width (the tables are then one matmul against the
        stacked codebooks), else the covered groups per codebook. Cached until codes change."""
        if self._lookup is None:
            M, G = self.num_codebooks, self.num_groups
            if all(grp is None for grp in self.groups) and len(set(self.nbits)) == 1:
                K = 1 << self.nbits[0]  # table layout [G, M, K]
                index = torch.stack([self.codes(m) + m * K for m in range(M)], -1)
                index = index + (torch.arange(G, device=index.device) * (M * K))[None, :, None]
                self._lookup = (index.reshape(self.out_features, -1).T.contiguous().reshape(-1), None)
            else:
                parts, offset = [], 0  # table layout: per codebook [G_m, K_m], concatenated
                for m in range(M):
                    codes = self.codes(m)
                    parts.append(codes + (torch.arange(codes.shape[1], device=codes.device) << self.nbits[m]) + offset)
                    offset += codes.shape[1] << self.nbits[m]
                index = torch.cat(parts, 1).T.contiguous().reshape(-1)
                self._lookup = (index, [self.group_index(m) for m in range(M)])
        return self._lookup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x Ŵᵀ + b. Up to `lookup_max_entries` (tokens x Σ_m 2**b_m) the lookup path runs;
        beyond it, building the tables costs more than dequantizing, and the weight is
        dequantized for this call only (never cached)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        n = x2.shape[0]
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if n * self._table_entries > self.lookup_max_entries:
            return F.linear(x2, self.dequantize().to(x.dtype), bias).reshape(*lead, self.out_features)
        index, groups = self._lookup_plan()
        xg = x2.reshape(n, self.num_groups, self.in_group_size)
        if groups is None:
            books = [self.codebook(m) for m in range(self.num_codebooks)]
            C = books[0] if len(books) == 1 else torch.cat(books)
            T = torch.matmul(xg, C.to(x.dtype).T).reshape(n, -1)  # [N, G·M·K]
        else:
            T = torch.cat([
                torch.matmul(xg if grp is None else xg[:, grp], self.codebook(m).to(x.dtype).T).reshape(n, -1)
                for m, grp in enumerate(groups)
            ], 1)  # [N, Σ_m G_m·K_m]
        if n == 1:
            y = T.reshape(-1).index_select(0, index).view(-1, self.out_features).sum(0, keepdim=True)
        else:
            y = T.index_select(1, index).view(n, -1, self.out_features).sum(1)
        y = y * self.scales.to(x.dtype)
        if bias is not None:
            y = y + bias
        return y.reshape(*lead, self.out_features)

    def _apply(self, fn, recurse: bool = True):
        names = ("scales", *(f"codebook_{m}" for m in range(self.num_codebooks)))
        stored = {n: getattr(self, n) for n in names if n in self._buffers and getattr(self, n).dtype == torch.float16}
        result = super()._apply(fn, recurse)
        for name, value in stored.items():  # a dtype cast keeps the stored float16 values
            if self._buffers[name].dtype != torch.float16:
                self._buffers[name] = value.to(device=self._buffers[name].device)
        self._lookup = None
        return result

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._lookup = None

    # ---------------------------------------------------------------------------- bits
    def stored_tensors(self) -> list[StoredTensor]:
        tensors = []
        for m, b in enumerate(self.nbits):
            tensors.append(StoredTensor(f"codes_{m}", getattr(self, f"codes_{m}"), b))
            tensors.append(StoredTensor(f"codebook_{m}", self.codebook(m), 16))
        tensors.append(StoredTensor("scales", self.scales, 16))
        return tensors

    def formula_bits(self) -> float:
        """`aqlm_formula_bits` of this layer."""
        covered = [self.num_groups if grp is None else len(grp) for grp in self.groups]
        return aqlm_formula_bits(self.out_features, self.in_features, self.in_group_size, self.nbits, covered)

    # -------------------------------------------------------------------------- export
    def to_aqlm_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors of `aqlm.QuantizedLinear` (out_group_size 1): codes [out, G, M] int8/int16
        (two's complement of the unsigned code), codebooks [M, K, 1, g] float16, scales
        [out, 1, 1, 1] float16, and the bias (in its dtype) when there is one. The aqlm CPU
        kernels need float32 codebooks and scales: cast after loading (`.float()`).

        The layout needs every codebook over all groups with the same bit width; a CRVQ layer
        exports as a base layer and an extended layer instead (ValueError here).
        """
        if any(grp is not None for grp in self.groups) or len(set(self.nbits)) != 1:
            raise ValueError(
                "to_aqlm_state_dict: the aqlm layout needs every codebook to cover all input groups "
                f"with one bit width (nbits={self.nbits}, subsets={[g is not None for g in self.groups]})"
            )
        dtype, half = (torch.int8, 1 << 7) if self.nbits[0] <= 8 else (torch.int16, 1 << 15)
        codes = torch.stack([self.codes(m) for m in range(self.num_codebooks)], -1)
        codes = torch.where(codes >= half, codes - 2 * half, codes)  # aqlm reads `code % 2**b`
        out = {
            "codes": codes.to(dtype).contiguous(),
            "codebooks": torch.stack([self.codebook(m) for m in range(self.num_codebooks)])[:, :, None, :].contiguous(),
            "scales": self.scales.reshape(-1, 1, 1, 1).clone(),
        }
        if self.bias is not None:
            out["bias"] = self.bias.clone()
        return out

    def extra_repr(self) -> str:
        subsets = sum(g is not None for g in self.groups)
        return f"{super().extra_repr()}, g={self.in_group_size}, nbits={self.nbits}, subset_codebooks={subsets}"


def aqlm_quantization_config(
    layers: dict[str, AQLMLinear], not_quantized: list[str] | None = None
) -> dict[str, Any]:
    """The `quantization_config` of config.json that transformers' AQLM integration reads.

    layers: the model's AQLM layers by module name (all must share g, M and b);
    not_quantized: module names of linears left dense (e.g. ["lm_head"]). Each is listed both as
    a module name (transformers >= 5 matches module names) and as "<name>.weight" (4.x).
    """
    shapes = {(q.in_group_size, q.num_codebooks, tuple(q.nbits), tuple(map(str, q.groups))) for q in layers.values()}
    if len(shapes) != 1:
        raise ValueError(f"aqlm_quantization_config: layers differ in (g, M, nbits, groups): {sorted(shapes)}")
    layer = next(iter(layers.values()))
    skip = [name for base in (not_quantized or []) for name in (base, f"{base}.weight")]
    return {
        "quant_method": "aqlm",
        "in_group_size": layer.in_group_size,
        "out_group_size": 1,
        "num_codebooks": layer.num_codebooks,
        "nbits_per_codebook": layer.nbits[0],
        "linear_weights_not_to_quantize": skip,
    }
