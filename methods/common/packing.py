"""Dense bit packing of small unsigned integers into int32 words (the GPTQ checkpoint layout).

Values along one dimension form an LSB-first bit stream: value `j` occupies stream bits
`[j*bits, (j+1)*bits)`, and stream bit `p` is bit `p % 32` of word `p // 32`. For 2/4/8 bits this
is AutoGPTQ's layout (word = sum_j v_j << (bits*j)); for 3 bits it is also AutoGPTQ's layout,
whose packer writes 32 values into 3 words with values 10 and 21 straddling word boundaries
(value 10: bits 30-31 of word 0 and bit 0 of word 1; value 21: bit 31 of word 1 and bits 0-1
of word 2), i.e. exactly this continuous stream. A stream whose length is not a multiple of
32 bits is padded with zero bits. Words hold the unsigned 32-bit pattern reinterpreted as int32.

The work is vectorised over the tensor; the only Python loop runs over the 32 value positions
of a 32-value block (32 values x `bits` bits = `bits` whole words).
"""
from __future__ import annotations

import math

import torch

__all__ = ["MAX_BITS", "pack_rows", "packed_length", "unpack_rows"]

MAX_BITS = 8


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}")


def packed_length(count: int, bits: int) -> int:
    """Number of int32 words holding `count` values of `bits` bits: ceil(count*bits/32)."""
    _check_bits(bits)
    return -(-int(count) * bits // 32)


def _block_positions(bits: int) -> list[tuple[int, int, int, int]]:
    """For each value j of a 32-value block: (j, word, shift, bits in that word)."""
    out = []
    for j in range(32):
        word, shift = divmod(j * bits, 32)
        out.append((j, word, shift, min(bits, 32 - shift)))
    return out


def _split(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, list[int], int]:
    """View `t` as [pre, n, post] around `dim` (no movedim: the inner loop slices whole rows)."""
    dim = dim % t.dim()
    shape = list(t.shape)
    pre = math.prod(shape[:dim])
    post = math.prod(shape[dim + 1:])
    return t.reshape(pre, shape[dim], post).contiguous(), shape, dim


def _merge(t: torch.Tensor, shape: list[int], dim: int, n: int) -> torch.Tensor:
    """Inverse of `_split` with `n` entries along `dim`."""
    shape = list(shape)
    shape[dim] = n
    return t.reshape(shape).contiguous()


def pack_rows(values: torch.Tensor, bits: int, dim: int = 0) -> torch.Tensor:
    """Pack unsigned integers `< 2**bits` densely along `dim` into int32 words.

    values: integer tensor, `count` entries along `dim`, each in [0, 2**bits).
    Returns int32 with `ceil(count*bits/32)` entries along `dim` (other dims unchanged),
    on values' device.
    """
    _check_bits(bits)
    if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
        raise ValueError(f"pack_rows needs an integer tensor, got dtype {values.dtype}")
    v, shape, dim = _split(values, dim)
    if v.numel():
        lo, hi = (int(x) for x in torch.aminmax(v))
        if lo < 0 or hi >= 1 << bits:
            raise ValueError(
                f"pack_rows: values must lie in [0, {(1 << bits) - 1}] for bits={bits}, "
                f"got range [{lo}, {hi}]"
            )
    v = v.to(torch.int32)
    pre, count, post = v.shape
    n_words = packed_length(count, bits)
    n_blocks = -(-count // 32)
    if n_blocks * 32 > count:
        v = torch.cat([v, v.new_zeros(pre, n_blocks * 32 - count, post)], dim=1)
    v = v.reshape(pre, n_blocks, 32, post)
    words = v.new_zeros(pre, n_blocks, bits, post)
    for j, word, shift, low in _block_positions(bits):
        # Only the low `low` bits land in this word; a shift into bit 31 gives the int32
        # reinterpretation of the unsigned word.
        words[:, :, word] |= (v[:, :, j] & ((1 << low) - 1)) << shift
        if low < bits:  # the value straddles two words: its high bits start the next one
            words[:, :, word + 1] |= v[:, :, j] >> low
    words = words.reshape(pre, n_blocks * bits, post)[:, :n_words]
    return _merge(words, shape, dim, n_words)


def unpack_rows(
    packed: torch.Tensor, bits: int, count: int, dim: int = 0, dtype: torch.dtype = torch.int32
) -> torch.Tensor:
    """Inverse of `pack_rows`: the first `count` values along `dim`.

    packed: int32 with `ceil(count*bits/32)` entries along `dim`.
    Returns `dtype` (default int32) values in [0, 2**bits), `count` entries along `dim`.
    """
    _check_bits(bits)
    if packed.dtype != torch.int32:
        raise ValueError(f"unpack_rows needs an int32 tensor, got dtype {packed.dtype}")
    n_words = packed_length(count, bits)
    if packed.shape[dim] != n_words:
        raise ValueError(
            f"unpack_rows: {count} values of {bits} bits need {n_words} words along dim {dim}, "
            f"got {packed.shape[dim]}"
        )
    p, shape, dim = _split(packed, dim)
    pre, _, post = p.shape
    n_blocks = -(-count // 32)
    if n_blocks * bits > n_words:
        p = torch.cat([p, p.new_zeros(pre, n_blocks * bits - n_words, post)], dim=1)
    p = p.reshape(pre, n_blocks, bits, post)
    columns = []
    for _, word, shift, low in _block_positions(bits):
        # int32 `>>` is arithmetic; the mask drops the sign-extended bits.
        val = (p[:, :, word] >> shift) & ((1 << low) - 1)
        if low < bits:
            val = val | ((p[:, :, word + 1] & ((1 << (bits - low)) - 1)) << low)
        columns.append(val)
    out = torch.stack(columns, dim=2).reshape(pre, n_blocks * 32, post)[:, :count]
    return _merge(out.to(dtype), shape, dim, count)
