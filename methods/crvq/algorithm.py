"""CRVQ math as pure functions, on top of the AQLM engine (`methods.aqlm.algorithm`).

Notation: W [out, in], H [in, in], g = in_group_size, G = in/g input groups, b0 the basic
codebook's bits, b_1..b_E the extended codebooks' bits.
1. rank the input channels (`importance.channel_order`), take the n_crit·g most important
   ones as the critical channels, n_crit = floor(in · critical_ratio / g), and permute W's
   columns and H's rows and columns (perm[j] = original index of permuted column j) so that
   they come first, by descending score; the other channels follow in their original order
   (`reorder="critical_first"`) or by descending score too (`reorder="sorted"`);
2. critical region: the first n_crit permuted groups;
3. run AQLM on the permuted layer with the codebooks [C_0 over all groups] + [C_e over the
   critical groups] (residual k-means init: C_0 on all vectors, then each C_e on the critical
   residuals; the code search visits C_e inside the critical region only);
4. with n_crit == 0 the layer is plain one-codebook VQ (no permutation).
The relative error E(Ŵ)/tr(W H Wᵀ) is invariant under the joint permutation of W and H.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from methods.aqlm.algorithm import AQLMResult, CodebookSpec, aqlm_quantize
from methods.aqlm.layer import aqlm_formula_bits
from methods.crvq.importance import channel_order, critical_first

__all__ = [
    "CRVQResult", "critical_group_count", "crvq_formula_bits", "crvq_quantize", "crvq_specs",
    "index_bits", "permutation_bits", "permute_layer",
]

#: The AQLM engine: (W [out, in], H [in, in], codebook specs) -> AQLMResult.
Engine = Callable[[torch.Tensor, torch.Tensor, list[CodebookSpec]], AQLMResult]


@dataclass
class CRVQResult:
    """A CRVQ-quantized layer in permuted column order.

    perm: int64 [in], original column of each permuted column (identity when n_crit == 0).
    n_crit: critical groups (the first n_crit groups of the permuted columns); 0 = plain VQ.
    aqlm: the AQLM result on the permuted layer: codebook 0 over all groups, then the extended
      codebooks over groups 0..n_crit-1.
    scores: float64 [in] importance of each original channel (None for `random` and plain VQ).
    """

    perm: torch.Tensor
    n_crit: int
    aqlm: AQLMResult
    scores: torch.Tensor | None

    @property
    def fallback(self) -> bool:
        """True if the layer was too narrow for a critical group (plain VQ)."""
        return self.n_crit == 0

    def weight(self, in_group_size: int) -> torch.Tensor:
        """The dense quantized weight Ŵ [out, in] float32 in the original column order."""
        Wp = self.aqlm.weight(in_group_size)
        W = torch.empty_like(Wp)
        W[:, self.perm.to(Wp.device)] = Wp
        return W


def critical_group_count(in_features: int, critical_ratio: float, in_group_size: int) -> int:
    """n_crit = floor(in · critical_ratio / g): whole groups of g input channels (the effective
    ratio n_crit·g/in is at most `critical_ratio`)."""
    # a relative epsilon so that e.g. 0.02 · 400 / 8 = 1.0 is not floored to 0 by rounding
    return int(math.floor(in_features * critical_ratio / in_group_size * (1 + 1e-12)))


def crvq_specs(nbits: int, extended_nbits: Sequence[int], n_crit: int) -> list[CodebookSpec]:
    """The codebooks: C_0 (nbits) over all groups, then one per extended width over groups
    0..n_crit-1 (none when n_crit == 0)."""
    critical = tuple(range(n_crit))
    return [CodebookSpec(int(nbits))] + ([CodebookSpec(int(b), critical) for b in extended_nbits] if n_crit else [])


def index_bits(n: int) -> int:
    """Bits of one index into n entries: ceil(log2 n) (0 for n == 1)."""
    return (int(n) - 1).bit_length()


def permutation_bits(in_features: int) -> int:
    """Stored bits of a permutation of `in_features` channels: in · ceil(log2 in)."""
    return in_features * index_bits(in_features)


def crvq_formula_bits(
    out_features: int, in_features: int, in_group_size: int, nbits: int, extended_nbits: Sequence[int],
    n_crit: int, *, permutation: bool = True,
) -> float:
    """Bits per weight (spec): (out·in/g·b0 + Σ_e out·n_crit·b_e + Σ codebooks 2**b·g·16 + out·16
    + in·ceil(log2 in)) / (out·in); `permutation=False` is the paper's formula. With n_crit == 0
    (plain VQ fallback) it is the one-codebook AQLM formula and no permutation is stored."""
    if n_crit == 0:
        return aqlm_formula_bits(out_features, in_features, in_group_size, [int(nbits)])
    widths = [int(nbits), *map(int, extended_nbits)]
    covered = [in_features // in_group_size] + [n_crit] * len(extended_nbits)
    value = aqlm_formula_bits(out_features, in_features, in_group_size, widths, covered)
    if permutation:
        value += permutation_bits(in_features) / (out_features * in_features)
    return value


def permute_layer(W: torch.Tensor, H: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W[:, perm], H[perm][:, perm]): the same layer with its inputs reordered."""
    perm = perm.to(W.device)
    return W[:, perm].contiguous(), H[perm][:, perm].contiguous()


def crvq_quantize(
    W: torch.Tensor, H: torch.Tensor, *, nbits: int, extended_nbits: Sequence[int], critical_ratio: float,
    importance: str, in_group_size: int, generator: torch.Generator, reorder: str = "critical_first",
    importance_kmeans_iters: int = 10, engine: Engine | None = None, **aqlm_kwargs,
) -> CRVQResult:
    """Quantize W [out, in] (float32) with H [in, in] (float64) by CRVQ.

    reorder: "critical_first" (the critical channels first, the others in their original order,
    so the basic codebook sees the layer's own groups outside the critical region) or "sorted"
    (every channel by descending score, the published reference's order).

    engine: runs AQLM on the permuted layer (default: `aqlm_quantize` with `aqlm_kwargs`,
    `in_group_size` and `generator`). Random draws, in order: the importance VQ (or the random
    permutation), then the engine's. Raises ValueError if g does not divide in.
    """
    out, n_in = W.shape
    g = in_group_size
    if g < 1 or n_in % g:
        raise ValueError(f"in_group_size={g} must divide in_features={n_in}")
    if engine is None:
        engine = partial(aqlm_quantize, in_group_size=g, generator=generator, **aqlm_kwargs)
    n_crit = critical_group_count(n_in, critical_ratio, g)
    if n_crit == 0:
        perm = torch.arange(n_in, device=W.device)
        return CRVQResult(perm, 0, engine(W, H, crvq_specs(nbits, extended_nbits, 0)), None)
    perm, scores = channel_order(
        W, H, importance, nbits=nbits, in_group_size=g, generator=generator, iters=importance_kmeans_iters
    )
    if reorder == "critical_first":
        perm = critical_first(perm, n_crit * g)
    elif reorder != "sorted":
        raise ValueError(f"reorder must be 'critical_first' or 'sorted', got {reorder!r}")
    Wp, Hp = permute_layer(W, H, perm)
    result = engine(Wp, Hp, crvq_specs(nbits, extended_nbits, n_crit))
    return CRVQResult(perm, n_crit, result, scores)
