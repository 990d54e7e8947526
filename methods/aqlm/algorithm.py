"""AQLM math as pure functions: additive multi-codebook vector quantization through H.

Notation: W [out, in] float32, H [in, in] (the input second moment), g = in_group_size,
G = in / g input groups. Codebook m has K_m = 2**nbits_m entries of length g and covers the
input groups `groups_m` (None = all G; CRVQ restricts its extended codebooks to the critical
groups); its codes are [out, G_m] (G_m = covered groups, in the order of `groups_m`).
The weight is Ŵ = s ⊙ B with B[o, group j] = Σ_{m covers j} C_m[codes_m[o, j]] and one
scale s_o per output row. The error is E(Ŵ) = tr((Ŵ-W) H (Ŵ-W)ᵀ); activations are never
materialised.

Cost notes (what makes `aqlm_quantize` fast):
- codebook step (`methods.aqlm.codebook_update`): one [out,in]x[in,in] matmul per Adam step
  gives E's gradient for the codebooks and the scales.
- init: k-means weighted by s_o²·H_ii puts the codebook entries where the output error is
  (relative error after init 0.05 instead of 0.27 on the layer reference).
- code step: with P = (Ŵ-W) H kept up to date, the best code of codebook m at group j for
  every row is an [out, K] score matrix 2 s (P_j - s C_old H_jj) Cᵀ + s² diag(C H_jj Cᵀ);
  a change Δ [out, g] of group j updates P by the rank-g product Δ H[j, :].
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from methods.aqlm.codebook_update import code_matrix, codebook_adam_steps, error_gradients, reconstruct
from methods.aqlm.kmeans import kmeans

__all__ = [
    "AQLMResult", "CodebookSpec", "aqlm_quantize", "code_matrix", "code_step", "codebook_adam_steps", "error_gradients",
    "kmeans", "output_error", "reconstruct", "residual_kmeans_init",
]

#: Largest score matrix (rows x codebook entries) built at once by the code search.
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class CodebookSpec:
    """One additive codebook: 2**nbits entries; `groups` the input groups it covers (None = all)."""

    nbits: int
    groups: tuple[int, ...] | None = None


@dataclass
class AQLMResult:
    """The quantized representation and how it was reached.

    codebooks: per codebook, float32 [K_m, g] (float16-representable values).
    codes: per codebook, int64 [out, G_m] in [0, K_m).
    groups: per codebook, int64 [G_m] covered input groups, or None for all.
    scales: float32 [out] (float16-representable). Ŵ = scales[:, None] * reconstruction.
    rel_error: E(Ŵ) / tr(W H Wᵀ) of the returned (float16-rounded) representation.
    history: relative error after the init and after every epoch.
    """

    codebooks: list[torch.Tensor]
    codes: list[torch.Tensor]
    groups: list[torch.Tensor | None]
    nbits: list[int]
    scales: torch.Tensor
    rel_error: float
    epochs: int
    history: list[float] = field(default_factory=list)

    def weight(self, in_group_size: int) -> torch.Tensor:
        """The dense quantized weight Ŵ [out, in] float32."""
        out, n_groups = self.scales.shape[0], self.codes[0].shape[1]  # codebook 0 covers all groups
        B = reconstruct(self.codebooks, self.codes, self.groups, out, n_groups)
        return self.scales[:, None] * B.reshape(out, n_groups * in_group_size)


# ---------------------------------------------------------------------- representation
def residual_kmeans_init(
    Wn: torch.Tensor, specs: Sequence[CodebookSpec], in_group_size: int, *,
    generator: torch.Generator, iters: int = 50, init: str = "random", weights: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]]:
    """Residual k-means: fit codebook 1 on the vectors of Wn [out, in], subtract, fit 2, ...

    Each codebook is fitted on the current residual vectors of the groups it covers.
    weights: optional [out, in] per-weight k-means weights (see `kmeans`).
    Returns (codebooks [K_m, g], codes int64 [out, G_m], groups int64 [G_m] or None).
    """
    out, n_in = Wn.shape
    g = in_group_size
    residual = Wn.float().reshape(out, n_in // g, g).clone()
    wts = None if weights is None else weights.float().reshape(out, n_in // g, g)
    codebooks, codes, groups = [], [], []
    for spec in specs:
        grp = None if spec.groups is None else torch.as_tensor(spec.groups, dtype=torch.long, device=Wn.device)
        vectors = residual if grp is None else residual[:, grp]
        w = None if wts is None else (wts if grp is None else wts[:, grp]).reshape(-1, g)
        C, assign = kmeans(
            vectors.reshape(-1, g), 1 << spec.nbits, generator=generator, iters=iters, init=init, weights=w
        )
        c = assign.view(out, -1)
        if grp is None:
            residual -= C[c]
        else:
            residual[:, grp] -= C[c]
        codebooks.append(C)
        codes.append(c)
        groups.append(grp)
    return codebooks, codes, groups


def output_error(D: torch.Tensor, H: torch.Tensor) -> float:
    """E = tr(D H Dᵀ) for D = Ŵ - W [out, in], computed in float64."""
    D = D.double()
    return float(((D @ H.double()) * D).sum())


# ------------------------------------------------------------------------- code step
def _group_columns(groups: Sequence[torch.Tensor | None], n_groups: int) -> list[list[int]]:
    """Per codebook, the column of each input group in its codes (-1 where not covered)."""
    cols = []
    for grp in groups:
        col = list(range(n_groups)) if grp is None else [-1] * n_groups
        if grp is not None:
            for p, j in enumerate(grp.tolist()):
                col[j] = p
        cols.append(col)
    return cols


def _search_group(
    Pj: torch.Tensor, dj: torch.Tensor, Hjj: torch.Tensor, s: torch.Tensor,
    books: list[torch.Tensor], old: torch.Tensor, beam: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best codes of one input group for every row, other groups fixed.

    Pj, dj: [out, g] the group's slice of P = D H and of D = Ŵ - W; Hjj [g, g];
    books: the codebooks covering the group, in search order; old: int64 [out, M_j].
    Cost of a group difference d: 2 d·q + d H_jj d with q = P_j - d_j H_jj (the field of the
    other groups). Beam search keeps the `beam` cheapest hypotheses per row while visiting the
    codebooks once (beam 1: greedy coordinate descent).
    Returns (codes int64 [out, M_j], E change [out] float32, <= 0 up to rounding).
    """
    out = Pj.shape[0]
    q = Pj - dj @ Hjj
    s1 = s[:, None, None]
    hyp = old[:, None, :]                                     # [out, nb, M_j]
    d = dj[:, None, :]                                        # [out, nb, g]
    cost0 = 2 * (dj * q).sum(1) + ((dj @ Hjj) * dj).sum(1)    # [out]
    for m, C in enumerate(books):
        K = C.shape[0]
        CH = C @ Hjj
        cHc = (CH * C).sum(1)
        r = d - s1 * C[hyp[..., m]]                           # d without codebook m
        rH = r @ Hjj
        base = 2 * (r * q[:, None]).sum(-1) + (rH * r).sum(-1)  # [out, nb]
        z = q[:, None] + rH
        nb = hyp.shape[1]
        keep = min(beam, nb * K)
        rows = max(1, _CHUNK_ELEMENTS // (nb * K))
        picks, costs = [], []
        for a in range(0, out, rows):
            sl = slice(a, a + rows)
            sc = torch.addcmul(base[sl, :, None], 2 * s1[sl], z[sl] @ C.T).addcmul_(s1[sl] ** 2, cHc.expand(1, 1, K))
            if keep == 1:  # greedy: the minimum (as topk's first, ties to the lower index)
                val, idx = sc.reshape(sc.shape[0], -1).min(dim=1, keepdim=True)
            else:
                val, idx = sc.reshape(sc.shape[0], -1).topk(keep, dim=1, largest=False, sorted=True)
            picks.append(idx)
            costs.append(val)
        idx = torch.cat(picks)
        parent, k = idx // K, idx % K
        hyp = hyp.gather(1, parent[..., None].expand(-1, -1, hyp.shape[2])).clone()
        hyp[..., m] = k
        d = r.gather(1, parent[..., None].expand(-1, -1, r.shape[2])) + s1 * C[k]
        best_cost = torch.cat(costs)[:, 0]
    return hyp[:, 0], best_cost - cost0


#: Group changes of the code search applied to P = (Ŵ-W) H at once (see `code_step`).
_LAZY_GROUPS = 32


@torch.no_grad()
def code_step(
    W: torch.Tensor, H: torch.Tensor, codebooks: Sequence[torch.Tensor], codes: list[torch.Tensor],
    groups: Sequence[torch.Tensor | None], scales: torch.Tensor, *, generator: torch.Generator,
    beam: int = 1, lazy_groups: int = _LAZY_GROUPS,
) -> float:
    """One pass of the code search over every input group (random order), codebooks in random
    order per group; updates `codes` in place and returns E after the pass (float).

    E and P = (Ŵ-W) H are updated incrementally: after group j changes by Δ [out, g],
    E += ΔE (from the search) and P += Δ H[j, :]. The P update is lazy (exact up to float
    rounding): up to `lazy_groups` changes are kept aside and applied in one [out, n·g] x
    [n·g, in] product; the group searched next gets its slice of P corrected by the pending
    changes only (Δ_pending H[pending, j], a [n·g, g] product). This turns G thin rank-g updates
    of the whole [out, in] P into G / lazy_groups matrix products (1 = the eager update).
    W [out, in], H [in, in] float32.
    """
    out, n_in = W.shape
    g = codebooks[0].shape[1]
    n_groups = n_in // g
    cols = _group_columns(groups, n_groups)
    B = reconstruct(codebooks, codes, groups, out, n_groups)
    D = (scales[:, None] * B.view(out, n_in) - W).view(out, n_groups, g)
    P = (D.view(out, n_in) @ H).view(out, n_groups, g)
    E = float(((P * D).double()).sum())
    Hrows = H.view(n_groups, g, n_in)
    H4 = H.view(n_groups, g, n_groups, g)
    lazy = max(1, int(lazy_groups))
    pending_delta = torch.empty(out, lazy * g, dtype=W.dtype, device=W.device)
    pending: list[int] = []

    def flush() -> None:
        if pending:
            n = len(pending)
            rows = Hrows[torch.as_tensor(pending, device=W.device)].reshape(n * g, n_in)
            P.view(out, n_in).addmm_(pending_delta[:, : n * g], rows)
            pending.clear()

    for j in torch.randperm(n_groups, generator=generator).tolist():
        ms = [m for m in torch.randperm(len(codebooks), generator=generator).tolist() if cols[m][j] >= 0]
        if not ms:
            continue
        Hjj = Hrows[j][:, j * g : (j + 1) * g]
        Pj = P[:, j]
        if pending:
            n = len(pending)
            cross = H4[torch.as_tensor(pending, device=W.device), :, j, :].reshape(n * g, g)
            Pj = Pj + pending_delta[:, : n * g] @ cross
        old = torch.stack([codes[m][:, cols[m][j]] for m in ms], 1)
        new, dE = _search_group(Pj, D[:, j], Hjj, scales, [codebooks[m] for m in ms], old, beam)
        changed = (new != old).any(1)
        if not bool(changed.any()):
            continue
        delta_b = codebooks[ms[0]][new[:, 0]] - codebooks[ms[0]][old[:, 0]]
        for i, m in enumerate(ms[1:], 1):
            delta_b += codebooks[m][new[:, i]] - codebooks[m][old[:, i]]
        delta = scales[:, None] * delta_b
        for i, m in enumerate(ms):
            codes[m][:, cols[m][j]] = new[:, i]
        D[:, j] += delta
        n = len(pending)
        pending_delta[:, n * g : (n + 1) * g] = delta
        pending.append(j)
        if len(pending) == lazy:
            flush()
        E += float(dE.double().sum())
    flush()
    return E


# ------------------------------------------------------------------------- the loop
@torch.no_grad()
def aqlm_quantize(
    W: torch.Tensor, H: torch.Tensor, specs: Sequence[CodebookSpec], *, in_group_size: int,
    generator: torch.Generator, max_epochs: int = 100, steps_per_epoch: int = 100,
    lr: float = 1e-4, betas: tuple[float, float] = (0.0, 0.95),
    relative_mse_tolerance: float = 0.01, beam_size: int = 1, kmeans_iters: int = 50,
    kmeans_init: str = "random", kmeans_metric: str = "hessian",
    callback: Callable[[int, float], None] | None = None,
) -> AQLMResult:
    """Quantize W [out, in] with the codebooks `specs` (the first must cover every group).

    Scales s_o = ‖W_o‖₂; residual k-means init on W/s (kmeans_metric "hessian": coordinates
    weighted by s_o²·H_ii, the diagonal of E in the scaled space, so codebook entries go where
    the output error is; "euclidean": plain k-means); then per epoch `steps_per_epoch` Adam
    steps on codebooks and scales followed by one code-search pass, until the relative
    improvement of E over the previous epoch is below `relative_mse_tolerance` or
    `max_epochs` epochs ran. The best state seen is returned, with codebooks and scales
    rounded to float16 (their stored dtype). `callback(epoch, rel_error)` runs after the init
    (epoch 0) and every epoch. All randomness comes from `generator`.
    """
    out, n_in = W.shape
    g = in_group_size
    if g < 1 or n_in % g:
        raise ValueError(f"in_group_size={g} must divide in_features={n_in}")
    if not specs or specs[0].groups is not None:
        raise ValueError("the first codebook must cover every input group (groups=None)")
    W = W.detach().float().contiguous()
    H64 = H.detach().double()
    H32 = H64.float().contiguous()
    base = max(output_error(W, H64), 1e-300)
    scales = W.norm(dim=1).clamp_min(1e-8)
    if kmeans_metric == "hessian":
        weights = scales[:, None].pow(2) * H32.diagonal()[None, :]
        weights = weights / weights.mean().clamp_min(1e-30)
    elif kmeans_metric == "euclidean":
        weights = None
    else:
        raise ValueError(f"kmeans_metric must be 'hessian' or 'euclidean', got {kmeans_metric!r}")
    codebooks, codes, groups = residual_kmeans_init(
        W / scales[:, None], specs, g, generator=generator, iters=kmeans_iters, init=kmeans_init,
        weights=weights,
    )
    nbits = [s.nbits for s in specs]

    def rel_error() -> float:
        B = reconstruct(codebooks, codes, groups, out, n_in // g).view(out, n_in)
        return output_error(scales[:, None] * B - W, H64) / base

    def snapshot() -> tuple:
        return [c.detach().clone() for c in codebooks], [c.clone() for c in codes], scales.detach().clone()

    history = [rel_error()]
    if callback:
        callback(0, history[0])
    best, best_state = history[0], snapshot()
    params = [*codebooks, scales]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr, betas=(float(betas[0]), float(betas[1])))
    epochs = 0
    for epoch in range(1, max_epochs + 1):
        codebook_adam_steps(W, H32, codebooks, codes, groups, scales, optimizer, steps_per_epoch)
        code_step(W, H32, codebooks, codes, groups, scales, generator=generator, beam=beam_size)
        err = rel_error()
        history.append(err)
        epochs = epoch
        if callback:
            callback(epoch, err)
        previous = best
        if err < best:
            best, best_state = err, snapshot()
        if not math.isfinite(err) or (previous - err) / max(previous, 1e-300) < relative_mse_tolerance:
            break
    books, codes, scales = best_state
    books = [b.half().float() for b in books]
    scales = scales.half().float()
    W_hat = scales[:, None] * reconstruct(books, codes, groups, out, n_in // g).view(out, n_in)
    final = output_error(W_hat - W, H64) / base
    return AQLMResult(books, codes, groups, nbits, scales, final, epochs, history)
