"""`CRVQLinear`: an AQLM layer over importance-permuted input channels, whose extended
codebooks cover the critical (first n_crit) groups only.

Weight model, in permuted column order (perm[j] = original column of permuted column j):
  Ŵp[o, group j] = s_o · (C_0[codes_0[o, j]] + Σ_{e=1..E, j < n_crit} C_e[codes_e[o, j]])
and Ŵ[:, perm] = Ŵp. Buffers: those of `AQLMLinear` (codes_0 [out, G], codes_e [out, n_crit],
codebook_m [2**b_m, g] float16, scales [out] float16, bias) plus `perm` int32 [in].

Forward: y = Ŵp x_perm with x_perm = x[..., perm], computed by `AQLMLinear`'s paths (the
Triton kernel gathers x by `perm` itself; the CPU lookup builds one table per coverage set:
the basic codebook over all groups, the stacked extended codebooks over the critical prefix),
which equals the spec's inference form
  y = base(x_perm) + extended(x_perm[..., :n_crit·g])
(`split()` builds those two AQLM layers; `to_aqlm_state_dicts()` exports them in the `aqlm`
layout). Many tokens: the dense weight (original order) is dequantized for the call only.

Bits: codes at their bit widths, codebooks and scales at 16, the permutation at ceil(log2 in)
bits per entry (`formula_bits`); `paper_bits` leaves the permutation out (the paper's formula).
"""
from __future__ import annotations

from typing import Any

import torch

from harness.plugin import StoredTensor
from methods.aqlm.layer import AQLMLinear
from methods.crvq.algorithm import critical_group_count, crvq_formula_bits, index_bits

__all__ = ["CRVQLinear"]


class CRVQLinear(AQLMLinear):
    """CRVQ packed layer: an `AQLMLinear` (basic codebook over all groups, `extended_nbits`
    codebooks over groups 0..n_crit-1) applied to the input gathered by `perm`.

    It is an `AQLMLinear`, so code that tunes AQLM layers (block fine-tuning) tunes every
    codebook of it, extended ones included, and its scales; codes and `perm` stay fixed.
    """

    compute_path = "gather+aqlm-lookup"
    lookup_path = "gather+aqlm-lookup"
    kernel_path = "triton-crvq-gemv"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        in_group_size: int,
        nbits: int,
        extended_nbits: list[int],
        n_crit: int,
        bias: torch.Tensor | None = None,
    ):
        n_groups = in_features // max(int(in_group_size), 1)
        if isinstance(n_crit, bool) or not 1 <= int(n_crit) <= n_groups:
            raise ValueError(
                f"CRVQLinear: n_crit must be in 1..{n_groups} (the input groups), got {n_crit!r}; a layer "
                f"without a critical group is a plain AQLMLinear"
            )
        if not extended_nbits:
            raise ValueError("CRVQLinear: at least one extended codebook is needed")
        critical = list(range(int(n_crit)))
        super().__init__(
            in_features, out_features, in_group_size=in_group_size, nbits=[int(nbits), *map(int, extended_nbits)],
            groups=[None] + [critical] * len(extended_nbits), bias=bias,
        )
        self.n_crit = int(n_crit)
        self.register_buffer("perm", torch.arange(in_features, dtype=torch.int32))

    # ----------------------------------------------------------------------------- geometry
    @property
    def basic_nbits(self) -> int:
        return self.nbits[0]

    @property
    def extended_nbits(self) -> list[int]:
        return self.nbits[1:]

    @property
    def critical_features(self) -> int:
        """n_crit · g: the permuted input columns the extended codebooks cover."""
        return self.n_crit * self.in_group_size

    @property
    def critical_ratio(self) -> float:
        """Effective fraction of input channels in the critical region."""
        return self.critical_features / self.in_features

    # ------------------------------------------------------------------------ construction
    @classmethod
    def from_crvq(
        cls, codebooks: list[torch.Tensor], codes: list[torch.Tensor], nbits: list[int], scales: torch.Tensor,
        perm: torch.Tensor, n_crit: int, *, in_features: int, bias: torch.Tensor | None = None,
    ) -> "CRVQLinear":
        """Pack an AQLM result on the permuted layer (codebook 0 over all groups, then the
        extended ones over groups 0..n_crit-1: codes [out, G] and [out, n_crit]) with `perm` [in]."""
        out_features, g = scales.shape[0], codebooks[0].shape[1]
        layer = cls(in_features, out_features, in_group_size=g, nbits=nbits[0], extended_nbits=list(nbits[1:]),
                    n_crit=n_crit, bias=bias)
        packed = AQLMLinear.from_result(
            codebooks, codes, [None] + [torch.arange(n_crit)] * (len(nbits) - 1), nbits, scales,
            in_features=in_features,
        )
        state = {k: v for k, v in packed.state_dict().items()}
        state["perm"] = perm.detach().to(torch.int32).cpu()
        if bias is not None:
            state["bias"] = bias.detach().clone()
        layer.load_state_dict(state)
        if sorted(layer.perm.tolist()) != list(range(in_features)):
            raise ValueError(f"CRVQLinear.from_crvq: perm is not a permutation of {in_features} channels")
        return layer

    def format_config(self) -> dict[str, Any]:
        return {"in_group_size": self.in_group_size, "nbits": self.basic_nbits,
                "extended_nbits": list(self.extended_nbits), "n_crit": self.n_crit}

    # --------------------------------------------------------------------------- weights
    def dequantize_permuted(self) -> torch.Tensor:
        """Dense weight in permuted column order, Ŵp [out, in] float32."""
        return super().dequantize()

    def dequantize(self) -> torch.Tensor:
        """Dense weight [out, in] float32 in the original column order."""
        inverse = torch.argsort(self.perm.long())  # column i of W is permuted column inverse[i]
        return self.dequantize_permuted().index_select(1, inverse.to(self.scales.device))

    def _input_permutation(self) -> torch.Tensor:
        """The lookup path and the kernels read x[..., perm] (int64 [in])."""
        return self.perm.long()

    # forward: AQLMLinear's (Triton kernel on CUDA, table lookup on x[..., perm] for few tokens,
    # the dense weight in the original column order, this call only, beyond `lookup_max_entries`)

    # ---------------------------------------------------------------------------- bits
    def stored_tensors(self) -> list[StoredTensor]:
        return [*super().stored_tensors(), StoredTensor("perm", self.perm, index_bits(self.in_features))]

    @classmethod
    def bits_per_weight(cls, shape: tuple[int, int], config: Any) -> tuple[float, float]:
        """`crvq_formula_bits` of `config` with and without the permutation (plain VQ, and no
        permutation, when the layer is too narrow for a critical group)."""
        out_features, in_features = shape
        if in_features % config.in_group_size:
            raise ValueError(f"crvq: in_group_size={config.in_group_size} does not divide in_features={in_features}")
        n_crit = critical_group_count(in_features, config.critical_ratio, config.in_group_size)
        args = (out_features, in_features, config.in_group_size, config.nbits, config.extended_bits, n_crit)
        return crvq_formula_bits(*args, permutation=True), crvq_formula_bits(*args, permutation=False)

    def formula_bits(self) -> float:
        """Spec formula with the permutation (in · ceil(log2 in) bits)."""
        return crvq_formula_bits(self.out_features, self.in_features, self.in_group_size, self.basic_nbits,
                                 self.extended_nbits, self.n_crit, permutation=True)

    def paper_bits(self) -> float:
        """The paper's formula: the spec formula without the permutation."""
        return crvq_formula_bits(self.out_features, self.in_features, self.in_group_size, self.basic_nbits,
                                 self.extended_nbits, self.n_crit, permutation=False)

    # -------------------------------------------------------------------------- export
    def split(self) -> tuple[torch.Tensor, AQLMLinear, AQLMLinear]:
        """The spec's inference form: (perm int64 [in], base, extended) with
        y = base(x[..., perm]) + extended(x[..., perm][..., :n_crit·g]).

        base: 1-codebook AQLMLinear over all `in` columns (with the bias); extended: an
        E-codebook AQLMLinear over the n_crit·g critical columns. Both carry the row scales s."""
        E = len(self.extended_nbits)
        base = AQLMLinear.from_result(
            [self.codebook(0).float()], [self.codes(0)], [None], [self.basic_nbits], self.scales.float(),
            in_features=self.in_features, bias=self.bias,
        )
        extended = AQLMLinear.from_result(
            [self.codebook(m).float() for m in range(1, E + 1)], [self.codes(m) for m in range(1, E + 1)],
            [None] * E, self.extended_nbits, self.scales.float(), in_features=self.critical_features,
        )
        return self.perm.long().cpu(), base, extended

    def to_aqlm_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """{"perm": {"perm": int32 [in]}, "base": aqlm tensors, "extended": aqlm tensors}: two
        layers in the `aqlm` package layout (`AQLMLinear.to_aqlm_state_dict`) plus the gather
        index. The extended layer repeats the row scales (the aqlm layout stores them per layer)
        and needs one bit width for all extended codebooks (ValueError otherwise)."""
        perm, base, extended = self.split()
        return {
            "perm": {"perm": perm.to(torch.int32)},
            "base": base.to_aqlm_state_dict(),
            "extended": extended.to_aqlm_state_dict(),
        }

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_crit={self.n_crit} ({self.critical_ratio:.2%} of inputs), "
                f"extended_nbits={self.extended_nbits}")
