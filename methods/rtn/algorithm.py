"""RTN math as pure, vectorised functions.

Grids follow the GPTQ conventions. Asymmetric: the range [min(w_min, 0), max(w_max, 0)] of
each group (0 is always inside, so the integer zero point fits in [0, 2**bits - 1]) is split
into 2**bits - 1 steps. Symmetric: scale = 2*max|w| / (2**bits - 1), zero = 2**(bits-1).
Scales are rounded *up* to float16 (the stored dtype) so that every weight of the group lies
within scale/2 of a grid point; an all-zero group (or one whose range underflows float16)
gets the smallest normal float16 as its scale, and reconstructs to (about) zero.
"""
from __future__ import annotations

import torch

__all__ = ["dequantize_codes", "minmax_grid", "quantize_codes"]

_FP16_TINY = torch.finfo(torch.float16).tiny


def _groups(W: torch.Tensor, group_size: int) -> tuple[torch.Tensor, int]:
    """W [rows, in] -> float32 view [rows, G, gs]."""
    rows, cols = W.shape
    gs = cols if group_size == -1 else group_size
    if gs < 1 or cols % gs:
        raise ValueError(
            f"group_size={group_size} does not divide in_features={cols}; use -1 or a divisor of {cols}"
        )
    return W.float().reshape(rows, cols // gs, gs), gs


def _round_up_fp16(x: torch.Tensor) -> torch.Tensor:
    """The smallest float16 value >= x (x >= 0, finite), returned as float32."""
    h = x.to(torch.float16)
    below = h.float() < x
    # For non-negative float16, the next value up is the next integer bit pattern.
    bumped = (h.view(torch.int16) + 1).view(torch.float16)
    return torch.where(below, bumped, h).float()


def minmax_grid(
    W: torch.Tensor, bits: int, group_size: int, symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row, per-group min-max grid.

    W: [rows, in] float (rows = out_features); group_size: -1 or a divisor of `in`.
    Returns scales float32 [G, rows] (float16-representable, > 0) and zeros int32 [G, rows]
    in [0, 2**bits - 1].
    """
    maxq = (1 << bits) - 1
    groups, _ = _groups(W, group_size)
    w_min = groups.amin(dim=-1).clamp(max=0.0)
    w_max = groups.amax(dim=-1).clamp(min=0.0)
    if symmetric:
        scale = 2.0 * torch.maximum(-w_min, w_max) / maxq
    else:
        scale = (w_max - w_min) / maxq
    scale = _round_up_fp16(scale)
    scale = torch.where(scale > 0, scale, torch.full_like(scale, _FP16_TINY))
    if symmetric:
        zero = torch.full_like(scale, float(1 << (bits - 1)))
    else:
        zero = torch.round(-w_min / scale).clamp(0, maxq)
    return scale.t().contiguous(), zero.t().to(torch.int32).contiguous()


def quantize_codes(
    W: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int
) -> torch.Tensor:
    """Nearest grid point of each weight: clamp(round(W / scale) + zero, 0, 2**bits - 1).

    W: [out, in] float; scales: [G, out] float; zeros: [G, out] int.
    Returns int32 codes [out, in].
    """
    groups, _ = _groups(W, group_size)
    scale = scales.t().float().unsqueeze(-1)
    zero = zeros.t().float().unsqueeze(-1)
    codes = (torch.round(groups / scale) + zero).clamp_(0, (1 << bits) - 1)
    return codes.reshape(W.shape).to(torch.int32)


def dequantize_codes(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """(code - zero) * scale: float32 [out, in] from codes [out, in], scales/zeros [G, out]."""
    groups, _ = _groups(codes, group_size)
    return ((groups - zeros.t().float().unsqueeze(-1)) * scales.t().float().unsqueeze(-1)).reshape(
        codes.shape
    )
