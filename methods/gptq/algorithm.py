"""GPTQ as pure functions: second-order error compensation over a min-max integer grid.

Specification: /work/shared/spec/methods.md, section "GPTQ". Notation: a linear layer has
weight `W [out, in]`; `H [in, in]` is the mean over calibration tokens of `x xᵀ` (float64).

Precision: the damping, the inverse and both Cholesky factorisations run in float64, because
`H` of a real layer can have a condition number of 1e6 and more (outlier channels, few tokens),
where a float32 Cholesky of `H⁻¹` fails or loses most digits; this is O(in³) once per layer.
The column loop and the lazy batch updates (the O(out·in²) part) run in float32 on the upper
Cholesky factor of `H⁻¹`, the numerically benign form GPTQ propagates errors through, and
float32 is the precision of the weights themselves. No global matmul/TF32 setting is touched.

Grids are RTN's (`methods.rtn.algorithm.minmax_grid`): scales are float16-representable, so
the weight GPTQ compensates for is exactly the weight the packed layer stores.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from methods.rtn.algorithm import minmax_grid

logger = logging.getLogger(__name__)

__all__ = ["GPTQResult", "gptq_quantize"]

_MAX_RETRY_DAMP = 1.0  # retries multiply the damping by 10 while it stays <= this


@dataclass(frozen=True)
class GPTQResult:
    """What GPTQ chose for one layer `W [out, in]`, every tensor in the ORIGINAL column order.

    codes: int32 [out, in], in [0, 2^bits).
    scales: float32 [G, out]; zeros: int32 [G, out] (G groups; G = 1 for group_size -1).
    g_idx: int32 [in], the group of each input column;
        `dequantized == (codes - zeros[g_idx].T) * scales[g_idx].T` exactly.
    perm: int64 [in] processing order (column `perm[j]` was quantized j-th), or None
        without act-order.
    dequantized: float32 [out, in], the weight GPTQ chose.
    damp: the relative damping λ actually used (larger than asked if H needed a retry).
    num_dead: number of dead input columns (diag H == 0), whose weights are 0.
    """

    codes: Tensor
    scales: Tensor
    zeros: Tensor
    g_idx: Tensor
    perm: Tensor | None
    dequantized: Tensor
    damp: float
    num_dead: int


def _group_grids(W: Tensor, bits: int, group_size: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """RTN's min-max grid of each group of `group_size` consecutive columns of W [rows, cols].

    Unlike `minmax_grid`, the last group may be shorter. Returns scales float32 [G, rows] and
    zeros int32 [G, rows].
    """
    starts = range(0, W.shape[1], group_size)
    grids = [minmax_grid(W[:, s : s + group_size], bits, -1, symmetric) for s in starts]
    return torch.cat([g[0] for g in grids]), torch.cat([g[1] for g in grids])


def _inverse_cholesky(H: Tensor, damp: float) -> tuple[Tensor, float]:
    """Upper Cholesky factor U of (H + λ·mean(diag H)·I)⁻¹ (so the inverse is UᵀU), in float64.

    If the damped H is not positive definite, retries with λ ×10 while λ <= 1 (logging a
    warning), then raises ValueError. Returns (U, λ used).
    """
    n = H.shape[0]
    mean_diag = H.diagonal().mean()
    lambdas = [damp]
    lam = max(damp, 1e-3)
    while lam * 10 <= _MAX_RETRY_DAMP * (1 + 1e-9):
        lam *= 10
        lambdas.append(lam)
    eye = torch.eye(n, dtype=H.dtype, device=H.device)
    for lam in lambdas:
        L, info = torch.linalg.cholesky_ex(H + lam * mean_diag * eye)
        if info.item() == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info.item() == 0:
                if lam != damp:
                    logger.warning("GPTQ: H not positive definite with damp=%g; used damp=%g", damp, lam)
                return U, lam
    raise ValueError(
        f"GPTQ: the Hessian H [{n}x{n}] is not positive definite even with damp={lambdas[-1]:g} "
        "(methods/gptq/algorithm.py). Check the calibration statistics (too few tokens, "
        "non-finite activations) or raise the GPTQ `damp` parameter."
    )


def _check_inputs(
    W: Tensor, H: Tensor, bits: int, group_size: int, damp: float, block_size: int
) -> None:
    where = "methods/gptq/algorithm.py: gptq_quantize"
    if W.dim() != 2:
        raise ValueError(f"{where}: W must be 2-D [out, in], got shape {tuple(W.shape)}")
    n = W.shape[1]
    if H.shape != (n, n):
        raise ValueError(f"{where}: H must be [in, in] = [{n}, {n}], got {tuple(H.shape)}")
    if not 1 <= bits <= 16:
        raise ValueError(f"{where}: `bits` must be in 1..16, got {bits}")
    if group_size != -1 and group_size < 1:
        raise ValueError(f"{where}: `group_size` must be -1 (per row) or positive, got {group_size}")
    if damp < 0:
        raise ValueError(f"{where}: `damp` must be >= 0, got {damp}")
    if block_size < 1:
        raise ValueError(f"{where}: `block_size` must be positive, got {block_size}")
    if not (torch.isfinite(W).all() and torch.isfinite(H).all()):
        raise ValueError(f"{where}: W or H has NaN/inf entries; check the layer and its calibration")
    if (H.diagonal() < 0).any():
        raise ValueError(f"{where}: H has negative diagonal entries; it is not a second moment x xᵀ")


@torch.no_grad()
def gptq_quantize(
    W: Tensor,
    H: Tensor,
    *,
    bits: int,
    group_size: int = 128,
    symmetric: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
) -> GPTQResult:
    """Quantize `W [out, in]` (any float dtype; not modified) with GPTQ given `H [in, in]`.

    H: mean over calibration tokens of x xᵀ (float64 preferred; not modified).
    bits: bits per code; group_size: consecutive input columns per grid (-1: one per row);
    symmetric: symmetric grid with zero 2^(bits-1); act_order: process columns by descending
    diag H (groups then follow processing order unless static_groups); static_groups: compute
    every group's grid upfront from the original W, groups in original column order;
    damp: relative damping λ (H += λ·mean(diag H)·I); block_size: columns per lazy batch update.
    Runs on W's device. Raises ValueError for bad arguments or an H that is not positive
    definite even after retrying with larger damping (see `_inverse_cholesky`).
    """
    _check_inputs(W, H, bits, group_size, damp, block_size)
    rows, n = W.shape
    device = W.device
    gs = n if group_size == -1 else group_size
    num_groups = -(-n // gs)
    maxq = 2**bits - 1

    W = W.detach().to(torch.float32, copy=True)
    H = H.detach().to(device=device, dtype=torch.float64, copy=True)
    diag = H.diagonal().clone()
    dead = diag == 0
    num_dead = int(dead.sum())
    dead_idx = dead.nonzero().squeeze(1)
    H[dead_idx, dead_idx] = 1.0
    W[:, dead] = 0.0

    # Static grids come from the original (dead-zeroed) W in original column order.
    if static_groups:
        scales, zeros = _group_grids(W, bits, gs, symmetric)
        col_group = torch.arange(n, device=device) // gs  # group of each original column
    else:
        scales = torch.empty(num_groups, rows, dtype=torch.float32, device=device)
        zeros = torch.empty(num_groups, rows, dtype=torch.int32, device=device)

    perm = None
    if act_order:
        perm = torch.argsort(diag, descending=True, stable=True)
        W = W[:, perm].contiguous()
        H = H[perm][:, perm]
        if static_groups:
            col_group = col_group[perm]  # group of each processing position

    U, damp_used = _inverse_cholesky(H, damp)
    U = U.to(torch.float32)
    del H

    Q = torch.empty_like(W)  # codes in processing order, as exact float integers
    if static_groups:
        zeros_f = zeros.to(torch.float32)
        group_of_position = col_group.tolist()
    for b0 in range(0, n, block_size):
        b1 = min(b0 + block_size, n)
        Wb = W[:, b0:b1]  # view: in-block updates land in W
        Ub = U[b0:b1, b0:b1]
        Err = torch.zeros(rows, b1 - b0, dtype=torch.float32, device=device)
        for j in range(b1 - b0):
            col = b0 + j
            if static_groups:
                g = group_of_position[col]
                scale, zero = scales[g], zeros_f[g]
            elif col % gs == 0:
                g = col // gs
                g_end = min(col + gs, n)
                # Current (fully error-updated) weights of the group; columns past this block
                # have not yet received this block's pending lazy update, so apply it here.
                current = Wb[:, j : min(g_end, b1) - b0]
                if g_end > b1:
                    beyond = W[:, b1:g_end] - Err[:, :j] @ U[b0:col, b1:g_end]
                    current = torch.cat([current, beyond], dim=1)
                s, z = minmax_grid(current, bits, -1, symmetric)
                scales[g], zeros[g] = s[0], z[0]
                scale, zero = s[0], z[0].to(torch.float32)
            w = Wb[:, j]
            q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
            Q[:, col] = q
            err = (w - (q - zero) * scale) / Ub[j, j]
            Wb[:, j + 1 :].addr_(err, Ub[j, j + 1 :], alpha=-1.0)
            Err[:, j] = err
        if b1 < n:
            W[:, b1:].addmm_(Err, U[b0:b1, b1:], alpha=-1.0)

    codes = Q.to(torch.int32)
    position_group = torch.arange(n, device=device) // gs
    if perm is not None:
        inv = torch.argsort(perm)
        codes = codes[:, inv]
        g_idx = col_group[inv] if static_groups else position_group[inv]
    else:
        g_idx = position_group
    g_idx = g_idx.to(torch.int32)
    gi = g_idx.long()
    dequantized = (codes - zeros[gi].T).to(torch.float32) * scales[gi].T
    return GPTQResult(
        codes=codes.contiguous(),
        scales=scales,
        zeros=zeros,
        g_idx=g_idx,
        perm=perm,
        dequantized=dequantized.contiguous(),
        damp=damp_used,
        num_dead=num_dead,
    )
