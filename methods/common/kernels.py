"""Triton decode kernel of `GroupIntLinear` (RTN, GPTQ): a packed low-bit GEMV that reads the
GPTQ layout directly (any 1..8 bits, groups or act-order `g_idx`).

Each program takes BLOCK_N outputs of one token and a slice of the input dim: it loads the
int32 words holding its codes (`qweight` [ceil(in*bits/32), out], LSB-first stream, values that
straddle two words for 3/5/6/7 bits are joined), dequantizes them in registers as
`code * scale - zero * scale` (both products exact in float32, as the reference's
`(code - zero) * scale`) and accumulates the dot product with the input in float32; the partial
sums are added atomically into a float32 output. The dense weight is never built.

Imported only when a CUDA tensor (or Triton's interpreter, TRITON_INTERPRET=1) meets a layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from methods.common.triton_support import num_programs_target

__all__ = ["IntKernelPlan", "add_partial_sums", "int_gemv", "int_plan"]


@triton.jit
def add_partial_sums(y_row_ptr, acc, offs_n, mask_n, bias_ptr, pid_s, HAS_BIAS: tl.constexpr):
    """Add a program's float32 partial outputs `acc` [BLOCK_N] (at `offs_n`) into its token's row
    of y, atomically (the order of partial sums is free); the first input split adds the bias."""
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc += tl.where(pid_s == 0, bias, 0.0)
    tl.atomic_add(y_row_ptr + offs_n, acc, mask=mask_n, sem="relaxed")


@triton.jit
def _int_gemv_kernel(
    x_ptr, qw_ptr, scales_ptr, zs_ptr, gidx_ptr, bias_ptr, y_ptr,
    N, IN, k_per_split, stride_x, stride_y,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_GIDX: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    row = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, IN)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k_end
        mask = mask_k[:, None] & mask_n[None, :]
        bit = offs_k * BITS
        word = bit >> 5
        shift = bit & 31
        low = tl.minimum(32 - shift, BITS)  # bits of the value in its first word
        lo = tl.load(qw_ptr + word[:, None] * N + offs_n[None, :], mask=mask, other=0)
        codes = (lo >> shift[:, None]) & ((1 << low) - 1)[:, None]  # the mask drops sign extension
        if 32 % BITS != 0:  # values straddling two words: their high bits start the next word
            straddle = low < BITS
            hi = tl.load(qw_ptr + (word[:, None] + 1) * N + offs_n[None, :],
                         mask=mask & straddle[:, None], other=0)
            codes = codes | ((hi & ((1 << (BITS - low)) - 1)[:, None]) << low[:, None])
        if HAS_GIDX:
            grp = tl.load(gidx_ptr + offs_k, mask=mask_k, other=0)
        else:
            grp = offs_k // GROUP
        pos = grp[:, None] * N + offs_n[None, :]
        scale = tl.load(scales_ptr + pos, mask=mask, other=0.0).to(tl.float32)
        zs = tl.load(zs_ptr + pos, mask=mask, other=0.0)
        w = codes.to(tl.float32) * scale - zs
        xv = tl.load(x_ptr + row * stride_x + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        acc += tl.sum(w * xv[:, None], axis=0)
    add_partial_sums(y_ptr + row * stride_y, acc, offs_n, mask_n, bias_ptr, pid_s, HAS_BIAS)



@dataclass
class IntKernelPlan:
    """What the kernel needs for one layer (tensors on the layer's device)."""

    path: str
    bits: int
    group: int  # input columns per group
    in_features: int
    out_features: int
    qweight: torch.Tensor  # int32 [ceil(in*bits/32), out]
    scales: torch.Tensor  # float16 [G, out]
    zero_scales: torch.Tensor  # float32 [G, out]: zero * scale
    g_idx: torch.Tensor | None  # int32 [in]
    bias: torch.Tensor | None


def int_plan(layer) -> IntKernelPlan:
    """The kernel plan of a `GroupIntLinear` (any bits, group size and act-order)."""
    scales = layer.scales.contiguous()
    return IntKernelPlan(
        path=f"triton-int{layer.bits}-gemv", bits=layer.bits, group=layer.effective_group_size,
        in_features=layer.in_features, out_features=layer.out_features, qweight=layer.qweight.contiguous(),
        scales=scales, zero_scales=(layer.zeros().float() * scales.float()).contiguous(),
        g_idx=None if layer.g_idx is None else layer.g_idx.to(torch.int32).contiguous(), bias=layer.bias,
    )


def int_gemv(
    x: torch.Tensor, plan: IntKernelPlan, *, block_n: int = 64, block_k: int = 64, split: int | None = None
) -> torch.Tensor:
    """y = x Ŵᵀ + b for x [n, in] (float16/bfloat16/float32): [n, out] in x's dtype.

    split: slices of the input dim (None: enough programs for the device)."""
    x = x.contiguous()
    n, N, K = x.shape[0], plan.out_features, plan.in_features
    y = torch.zeros(n, N, dtype=torch.float32, device=x.device)
    grid_n = triton.cdiv(N, block_n)
    blocks = triton.cdiv(K, block_k)
    if split is None:
        split = max(1, min(blocks, triton.cdiv(num_programs_target(x), grid_n * n)))
    per = triton.cdiv(blocks, split) * block_k
    dummy = plan.scales
    _int_gemv_kernel[(grid_n, triton.cdiv(K, per), n)](
        x, plan.qweight, plan.scales, plan.zero_scales,
        plan.g_idx if plan.g_idx is not None else dummy, plan.bias if plan.bias is not None else dummy, y,
        N, K, per, x.stride(0), y.stride(0),
        BITS=plan.bits, GROUP=plan.group, HAS_GIDX=plan.g_idx is not None, HAS_BIAS=plan.bias is not None,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
    )
    return y if x.dtype == torch.float32 else y.to(x.dtype)
