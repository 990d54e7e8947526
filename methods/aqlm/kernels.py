"""Triton decode kernel of additive-codebook layers: AQLM (1x16, 2x8, 1x8, any M x b) and CRVQ.

One fused GEMV per coverage set of codebooks (AQLM: one set, every codebook over all input
groups; CRVQ: the basic codebook over all groups, then the extended ones over the critical
prefix): each program takes BLOCK_N outputs of one token and a slice of the input groups,
gathers its codes' codebook vectors (float16, cached on chip: 4 KiB for an 8-bit codebook of
group 8, 1 MiB for 16 bits) and accumulates their dot products with the input group in float32;
the row scale is applied and the partial sums are added atomically into a float32 output (the
groups are split over programs so that small layers still fill the GPU). The input is read
through the layer's permutation (CRVQ) inside the kernel. The dense weight is never built.

Imported only when a CUDA tensor (or Triton's interpreter, TRITON_INTERPRET=1) meets a layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from methods.common.kernels import add_partial_sums
from methods.common.triton_support import num_programs_target

__all__ = ["VQKernelPlan", "vq_gemv", "vq_plan"]

MAX_BOOKS_PER_LAUNCH = 4


@triton.jit
def _book_dot(codes_ptr, book_ptr, offs_n, offs_g, n_cols, mask, xv, GS: tl.constexpr):
    """Σ over the tile's groups of C[code[o, j]] · x_j for each output o of the tile: [BLOCK_N]."""
    codes = tl.load(codes_ptr + offs_n[:, None] * n_cols + offs_g[None, :], mask=mask, other=0)
    codes = codes.to(tl.int32) & 0xFFFF  # int16 storage holds the unsigned 16-bit code
    d = tl.arange(0, GS)
    vec = tl.load(book_ptr + codes[:, :, None] * GS + d[None, None, :]).to(tl.float32)
    return tl.sum(tl.sum(vec * xv[None, :, :], axis=2), axis=1)


@triton.jit
def _vq_gemv_kernel(
    x_ptr, perm_ptr, gidx_ptr,
    c0, c1, c2, c3, b0, b1, b2, b3,
    scales_ptr, bias_ptr, y_ptr,
    N, NG, groups_per_split, stride_x, stride_y,
    NUM_BOOKS: tl.constexpr, GS: tl.constexpr, HAS_PERM: tl.constexpr, HAS_GIDX: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    row = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    d = tl.arange(0, GS)
    g_start = pid_s * groups_per_split
    g_end = tl.minimum(g_start + groups_per_split, NG)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for g0 in range(g_start, g_end, BLOCK_G):
        offs_g = g0 + tl.arange(0, BLOCK_G)
        mask_g = offs_g < g_end
        grp = offs_g
        if HAS_GIDX:
            grp = tl.load(gidx_ptr + offs_g, mask=mask_g, other=0)
        cols = grp[:, None] * GS + d[None, :]
        if HAS_PERM:
            cols = tl.load(perm_ptr + cols, mask=mask_g[:, None], other=0)
        xv = tl.load(x_ptr + row * stride_x + cols, mask=mask_g[:, None], other=0.0).to(tl.float32)
        mask = mask_n[:, None] & mask_g[None, :]
        acc += _book_dot(c0, b0, offs_n, offs_g, NG, mask, xv, GS)
        if NUM_BOOKS > 1:
            acc += _book_dot(c1, b1, offs_n, offs_g, NG, mask, xv, GS)
        if NUM_BOOKS > 2:
            acc += _book_dot(c2, b2, offs_n, offs_g, NG, mask, xv, GS)
        if NUM_BOOKS > 3:
            acc += _book_dot(c3, b3, offs_n, offs_g, NG, mask, xv, GS)
    out = acc * tl.load(scales_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    add_partial_sums(y_ptr + row * stride_y, out, offs_n, mask_n, bias_ptr, pid_s, HAS_BIAS)


@dataclass
class _Launch:
    codes: list[torch.Tensor]  # up to 4 x [out, NG] uint8/int16
    books: list[torch.Tensor]  # up to 4 x [K, g] float16
    gidx: torch.Tensor | None  # int32 [NG] input groups of the code columns; None = 0..NG-1
    n_cols: int  # NG


@dataclass
class VQKernelPlan:
    """What the kernel launches need for one layer (tensors on the layer's device)."""

    path: str
    out_features: int
    in_group_size: int
    launches: list[_Launch]
    scales: torch.Tensor  # [out] float16
    bias: torch.Tensor | None
    perm: torch.Tensor | None  # int32 [in]


def vq_plan(layer) -> VQKernelPlan | None:
    """The kernel plan of an `AQLMLinear` (or `CRVQLinear`), or None when the kernel does not
    fit it (group size not a power of two up to 64, or codebooks not float16)."""
    g = layer.in_group_size
    if g & (g - 1) or g > 64:
        return None
    if any(layer.codebook(m).dtype != torch.float16 for m in range(layer.num_codebooks)):
        return None
    device = layer.scales.device
    launches = []
    for ms, grp in layer._coverage_sets():
        gidx = None
        if grp is not None and grp != list(range(len(grp))):
            gidx = torch.tensor(grp, dtype=torch.int32, device=device)
        for start in range(0, len(ms), MAX_BOOKS_PER_LAUNCH):
            chunk = ms[start:start + MAX_BOOKS_PER_LAUNCH]
            codes = [getattr(layer, f"codes_{m}").contiguous() for m in chunk]
            books = [layer.codebook(m).contiguous() for m in chunk]
            launches.append(_Launch(codes, books, gidx, int(codes[0].shape[1])))
    perm = layer._input_permutation()
    return VQKernelPlan(
        path=layer.kernel_path, out_features=layer.out_features, in_group_size=g, launches=launches,
        scales=layer.scales.contiguous(), bias=layer.bias,
        perm=None if perm is None else perm.to(device=device, dtype=torch.int32).contiguous(),
    )


def _split(n_cols: int, block_g: int, programs: int, target: int) -> tuple[int, int]:
    """(number of group slices, groups per slice), a multiple of block_g, to reach `target` programs."""
    blocks = triton.cdiv(n_cols, block_g)
    split = max(1, min(blocks, triton.cdiv(target, max(programs, 1))))
    per = triton.cdiv(blocks, split) * block_g
    return triton.cdiv(n_cols, per), per


def vq_gemv(x: torch.Tensor, plan: VQKernelPlan, *, block_n: int = 32, split: int | None = None) -> torch.Tensor:
    """y = x Ŵᵀ + b for x [n, in] (float16/bfloat16/float32): [n, out] in x's dtype.

    split: group slices per launch (None: enough programs for the device)."""
    x = x.contiguous()
    n, N, g = x.shape[0], plan.out_features, plan.in_group_size
    y = torch.zeros(n, N, dtype=torch.float32, device=x.device)
    block_g = max(1, 128 // g)
    grid_n = triton.cdiv(N, block_n)
    target = num_programs_target(x)
    dummy = plan.scales
    for i, launch in enumerate(plan.launches):
        if split is None:
            slices, per = _split(launch.n_cols, block_g, grid_n * n, target)
        else:
            per = triton.cdiv(triton.cdiv(launch.n_cols, split), block_g) * block_g
            slices = triton.cdiv(launch.n_cols, per)
        codes = launch.codes + [launch.codes[0]] * (MAX_BOOKS_PER_LAUNCH - len(launch.codes))
        books = launch.books + [launch.books[0]] * (MAX_BOOKS_PER_LAUNCH - len(launch.books))
        has_bias = plan.bias is not None and i == 0
        _vq_gemv_kernel[(grid_n, slices, n)](
            x, plan.perm if plan.perm is not None else dummy, launch.gidx if launch.gidx is not None else dummy,
            *codes, *books, plan.scales, plan.bias if has_bias else dummy, y,
            N, launch.n_cols, per, x.stride(0), y.stride(0),
            NUM_BOOKS=len(launch.codes), GS=g, HAS_PERM=plan.perm is not None,
            HAS_GIDX=launch.gidx is not None, HAS_BIAS=has_bias, BLOCK_N=block_n, BLOCK_G=block_g,
            num_warps=4,
        )
    return y if x.dtype == torch.float32 else y.to(x.dtype)
