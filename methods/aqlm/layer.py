"""`AQLMLinear`: the packed additive-codebook layer, and its export to the `aqlm` package layout.

Weight model: W[o, group j] = s_o · Σ_{m covers j} C_m[codes_m[o, j]] (see `algorithm.py`).

Buffers, per codebook m (covering `groups[m]`, None = all G = in/g input groups):
  codes_{m}     [out, G_m]  uint8 for b_m <= 8, int16 (the 16 bits of the unsigned code,
                            two's complement) for b_m <= 16
  codebook_{m}  [2**b_m, g] float16
and scales [out] float16, bias (optional, in its dtype).

Forward, by the number of tokens and the device (the path taken is in `last_path`):
- CUDA with Triton, up to `kernel_max_tokens` ("triton-aqlm-gemv", `kernels.py`): one fused
  GEMV gathers each output's codebook vectors on chip and dots them with the input groups.
- otherwise, few tokens ("aqlm-lookup"): per set of codebooks covering the same groups, the dot
  products of every input group with every codebook entry are computed once in float32
  (T [N, G_s, ΣK_s] = x_groups · Cᵀ), then each output gathers and sums its codes' entries
  (one `index_select` over all codebooks; the index is formed per call from the uint8 codes,
  kept group-major) and is scaled. The dense weight is not built.
- many tokens (above `lookup_max_entries`): the tables cost more than the weight, and the
  weight is dequantized for that call only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from harness.plugin import QuantizedLinear, StoredTensor
from methods.common.triton_support import guarded_launch, kernels_usable

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


@dataclass
class _LookupPlan:
    """Precomputed tensors of the lookup path (see `AQLMLinear._lookup_plan`)."""

    books_t: list[torch.Tensor]  # per coverage set: float32 [g, ΣK_s], stacked codebooks, transposed
    gathers: list[slice | torch.Tensor | None]  # per set: the input groups it covers (None = all)
    codes_t: torch.Tensor  # [Σ_m G_m, out] uint8 (int32 above 8 bits), group-major codes
    offsets: torch.Tensor  # [Σ_m G_m, 1] int32, table position of each row's code 0
    scales: torch.Tensor  # float32 [out]
    bias: torch.Tensor | None  # float32 [out]
    perm: torch.Tensor | None  # int64 [in]: the input gather (CRVQ)


def _group_selector(grp: list[int] | None, device: torch.device) -> slice | torch.Tensor | None:
    """How a coverage set picks its input groups: None (all), a slice (a prefix) or an index."""
    if grp is None:
        return None
    if grp == list(range(len(grp))):
        return slice(0, len(grp))
    return torch.tensor(grp, dtype=torch.long, device=device)


class AQLMLinear(QuantizedLinear):
    """Additive multi-codebook quantized linear layer (layout in the module docstring).

    nbits: bits per code of each codebook (1..16); groups: per codebook, the input groups it
    covers in the order of its code columns, or None for all (CRVQ's extended codebooks cover a
    subset). The first codebook need not cover all groups here (the algorithm requires it).
    """

    compute_path = "aqlm-lookup"
    #: Path name of the CPU/torch table lookup (CRVQ names its own).
    lookup_path = "aqlm-lookup"
    #: Path name of the Triton kernel (CRVQ names its own).
    kernel_path = "triton-aqlm-gemv"
    #: Largest tokens x table entries per input group (Σ_m 2**b_m · G_m/G) served by the lookup
    #: path (1x8: up to 8 tokens; 2x8: 4; 1x16: none): measured crossover with
    #: dequantize-then-matmul on a 2-core CPU.
    lookup_max_entries: int = 2048
    #: Most tokens served by the Triton GEMV kernel on CUDA (decode batches).
    kernel_max_tokens: int = 16

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
        G = self.num_groups
        self._table_entries = sum((1 << b) * (G if grp is None else len(grp)) / G for b, grp in zip(self.nbits, groups))
        self._lookup: _LookupPlan | None = None
        self._kernel: Any = None

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

    def format_config(self) -> dict[str, Any]:
        groups = [None if g is None else list(g) for g in self.groups]
        return {"in_group_size": self.in_group_size, "nbits": list(self.nbits), "groups": groups}

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

    # ------------------------------------------------------------------------- forward
    def _input_permutation(self) -> torch.Tensor | None:
        """Input columns the codes index, as int64 [in] (x[..., perm]); None = the identity.
        CRVQ overrides it with its channel permutation."""
        return None

    def _coverage_sets(self) -> list[tuple[list[int], list[int] | None]]:
        """Codebooks grouped by the input groups they cover: [(codebook ids, groups or None)]."""
        sets: dict[tuple[int, ...] | None, list[int]] = {}
        for m, grp in enumerate(self.groups):
            sets.setdefault(None if grp is None else tuple(grp), []).append(m)
        return [(ms, None if key is None else list(key)) for key, ms in sets.items()]

    def _lookup_plan(self) -> "_LookupPlan":
        """The lookup path's precomputed tensors on the layer's device (cached until the codes,
        the dtype or the device change): float32 codebooks stacked per coverage set, the groups
        of each set, and the codes transposed group-major, `codes_t` [Σ_m G_m, out] (uint8, or
        int32 holding unsigned codes above 8 bits), with `offsets` [Σ_m G_m, 1] int32 such that
        codes_t + offsets is every output's position in the concatenated tables. The int index
        is formed per call: a per-code int64 index would be 8x the codes' memory and traffic."""
        if self._lookup is None:
            device = self.scales.device
            wide = any(b > 8 for b in self.nbits)
            books_t, gathers, rows, offsets, offset = [], [], [], [], 0
            for ms, grp in self._coverage_sets():
                n_grp = self.num_groups if grp is None else len(grp)
                width = sum(1 << self.nbits[m] for m in ms)  # table layout per set: [G_s, ΣK_s]
                books_t.append(torch.cat([self.codebook(m).float() for m in ms]).T.contiguous())  # [g, ΣK_s]
                gathers.append(_group_selector(grp, device))
                base = 0
                for m in ms:
                    codes = self.codes(m).T  # [G_s, out] int64
                    rows.append(codes.to(torch.int32) if wide else codes.to(torch.uint8))
                    offsets.append(offset + base + torch.arange(n_grp, device=device, dtype=torch.int32) * width)
                    base += 1 << self.nbits[m]
                offset += n_grp * width
            bias = None if self.bias is None else self.bias.float()
            self._lookup = _LookupPlan(
                books_t, gathers, torch.cat(rows).contiguous(), torch.cat(offsets)[:, None].contiguous(),
                self.scales.float(), bias, self._input_permutation(),
            )
        return self._lookup

    def _kernel_plan(self) -> Any:
        """The Triton decode kernel's plan on this layer's device, or None when no kernel fits."""
        if self._kernel is None:
            from methods.aqlm.kernels import vq_plan

            self._kernel = vq_plan(self) or False
        return self._kernel or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x Ŵᵀ + b, by the fastest path for the call (recorded in `last_path`):
        on CUDA with Triton, up to `kernel_max_tokens` tokens, the fused code-gather GEMV
        (`kernel_path`); else up to `lookup_max_entries` (tokens x table entries per input
        group) the table lookup ("aqlm-lookup"); beyond it, building the tables costs more than
        the weight, which is dequantized for this call only (never cached)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        n = x2.shape[0]
        if torch.is_grad_enabled() and any(t.requires_grad for t in self.parameters(recurse=False)):
            self.last_path = "dequantize+matmul"  # training (block fine-tuning): differentiable path
            return self.reference_forward(x)
        if n <= self.kernel_max_tokens and kernels_usable(x2):
            plan = self._kernel_plan()
            if plan is not None:
                from methods.aqlm.kernels import vq_gemv

                y = guarded_launch((plan.path, x2.dtype, x2.device.type), lambda: vq_gemv(x2, plan))
                if y is not None:
                    self.last_path = plan.path
                    return y.reshape(*lead, self.out_features)
        if n * self._table_entries > self.lookup_max_entries:
            self.last_path = "dequantize+matmul"
            return self.reference_forward(x)
        self.last_path = self.lookup_path
        plan = self._lookup_plan()
        xf = x2.float()
        if plan.perm is not None:
            xf = xf.index_select(1, plan.perm)
        tables = []
        for books_t, gather in zip(plan.books_t, plan.gathers):
            xs = xf.view(n, self.num_groups, self.in_group_size)
            xs = xs[:, gather] if isinstance(gather, (slice, torch.Tensor)) else xs
            tables.append(torch.matmul(xs, books_t).reshape(n, -1))  # [n, G_s·ΣK_s]
        T = tables[0] if len(tables) == 1 else torch.cat(tables, 1)
        index = torch.add(plan.codes_t, plan.offsets).view(-1)  # int32 [Σ_m G_m · out]
        if n == 1:
            y = T.view(-1).index_select(0, index).view(-1, self.out_features).sum(0, keepdim=True)
        else:
            y = T.index_select(1, index).view(n, -1, self.out_features).sum(1)
        y = y * plan.scales
        if plan.bias is not None:
            y = y + plan.bias
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def trainable_buffers(self) -> list[str]:
        """Codebooks and scales: the continuous tensors fine-tuning may tune (codes stay fixed)."""
        return [*(f"codebook_{m}" for m in range(self.num_codebooks)), "scales"]

    def buffers_changed(self) -> None:
        """Tuned codebooks or scales invalidate the cached plans."""
        self.reset_plans()

    def reset_plans(self) -> None:
        """Drop the cached lookup/kernel plans: call after changing codes, codebooks, scales or
        the bias in place (moves, casts and `load_state_dict` do it already)."""
        self._lookup = self._kernel = None

    def _apply(self, fn, recurse: bool = True):
        names = ("scales", *(f"codebook_{m}" for m in range(self.num_codebooks)))
        stored = {n: getattr(self, n) for n in names if n in self._buffers and getattr(self, n).dtype == torch.float16}
        result = super()._apply(fn, recurse)
        for name, value in stored.items():  # a dtype cast keeps the stored float16 values
            if self._buffers[name].dtype != torch.float16:
                self._buffers[name] = value.to(device=self._buffers[name].device)
        self._lookup = self._kernel = None
        return result

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._lookup = self._kernel = None

    # ---------------------------------------------------------------------------- bits
    def stored_tensors(self) -> list[StoredTensor]:
        tensors = []
        for m, b in enumerate(self.nbits):
            tensors.append(StoredTensor(f"codes_{m}", getattr(self, f"codes_{m}"), b))
            tensors.append(StoredTensor(f"codebook_{m}", self.codebook(m), 16))
        tensors.append(StoredTensor("scales", self.scales, 16))
        return tensors

    @classmethod
    def bits_per_weight(cls, shape: tuple[int, int], config: Any) -> tuple[float, float]:
        """`aqlm_formula_bits` of `config.num_codebooks` x `config.nbits_per_codebook`-bit codebooks
        over all groups of `config.in_group_size`; AQLM's paper counts the same."""
        out_features, in_features = shape
        if in_features % config.in_group_size:
            raise ValueError(f"aqlm: in_group_size={config.in_group_size} does not divide in_features={in_features}")
        nbits = [config.nbits_per_codebook] * config.num_codebooks
        value = aqlm_formula_bits(out_features, in_features, config.in_group_size, nbits)
        return value, value

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
