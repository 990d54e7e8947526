"""Bit packing: round trips, the GPTQ/AutoGPTQ word layout, and input validation."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from methods.common.packing import pack_rows, packed_length, unpack_rows


def naive_pack(values: list[int], bits: int) -> list[int]:
    """Reference: an LSB-first bit stream, bit by bit, as unsigned words."""
    n_words = -(-len(values) * bits // 32)
    words = [0] * n_words
    for j, v in enumerate(values):
        for b in range(bits):
            pos = j * bits + b
            words[pos // 32] |= ((v >> b) & 1) << (pos % 32)
    return words


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 31, 32, 33, 96, 100, 576])
def test_round_trip_and_layout(bits: int, count: int) -> None:
    g = torch.Generator().manual_seed(bits * 1000 + count)
    values = torch.randint(0, 2**bits, (3, count), generator=g)
    packed = pack_rows(values, bits, dim=1)
    assert packed.dtype == torch.int32
    assert packed.shape == (3, packed_length(count, bits))
    assert torch.equal(unpack_rows(packed, bits, count, dim=1).long(), values)
    unsigned = [w & 0xFFFFFFFF for w in packed[0].tolist()]
    assert unsigned == naive_pack(values[0].tolist(), bits)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 8),
    count=st.integers(0, 130),
    other=st.integers(0, 4),
    dim=st.sampled_from([0, 1, -1]),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_any_dim(bits: int, count: int, other: int, dim: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    shape = [other, other]
    shape[dim] = count
    values = torch.randint(0, 2**bits, shape, generator=g)
    packed = pack_rows(values, bits, dim=dim)
    assert packed.shape[dim] == packed_length(count, bits)
    assert torch.equal(unpack_rows(packed, bits, count, dim=dim).long(), values)


def test_gptq_4bit_word() -> None:
    # AutoGPTQ 2/4/8-bit layout: word = sum_j v_j << (bits * j) over 32 // bits values.
    values = torch.arange(8).unsqueeze(1)  # 8 codes along dim 0, one column
    assert (pack_rows(values, 4, dim=0).item() & 0xFFFFFFFF) == 0x76543210


def test_autogptq_3bit_straddling_values() -> None:
    # AutoGPTQ's 3-bit packer: value 10 -> bits 30-31 of word 0 + bit 0 of word 1;
    # value 21 -> bit 31 of word 1 + bits 0-1 of word 2; value 22.. at 3*(j-22)+2 in word 2.
    v = torch.zeros(32, dtype=torch.long)
    v[10] = 0b111
    assert [w & 0xFFFFFFFF for w in pack_rows(v, 3).tolist()] == [0xC0000000, 0x1, 0x0]
    v = torch.zeros(32, dtype=torch.long)
    v[21] = 0b111
    assert [w & 0xFFFFFFFF for w in pack_rows(v, 3).tolist()] == [0x0, 0x80000000, 0x3]
    v = torch.zeros(32, dtype=torch.long)
    v[22], v[31] = 0b101, 0b111
    assert [w & 0xFFFFFFFF for w in pack_rows(v, 3).tolist()] == [0x0, 0x0, (5 << 2) | (7 << 29)]


def test_padding_bits_are_zero() -> None:
    values = torch.full((5,), 7)  # 15 bits of ones in one word
    assert pack_rows(values, 3).tolist() == [2**15 - 1]


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="values must lie"):
        pack_rows(torch.tensor([0, 4]), 2)
    with pytest.raises(ValueError, match="values must lie"):
        pack_rows(torch.tensor([-1]), 2)
    with pytest.raises(ValueError, match="bits"):
        pack_rows(torch.tensor([0]), 9)
    with pytest.raises(ValueError, match="integer tensor"):
        pack_rows(torch.tensor([0.0]), 2)
    with pytest.raises(ValueError, match="need 1 words"):
        unpack_rows(torch.zeros(2, dtype=torch.int32), 4, 8)


def test_outputs_are_contiguous_for_strided_inputs() -> None:
    values = torch.randint(0, 8, (33, 5)).t()  # [5, 33], transposed strides
    packed = pack_rows(values, 3, dim=1)
    assert packed.is_contiguous()
    unpacked = unpack_rows(packed, 3, 33, dim=1)
    assert unpacked.is_contiguous() and torch.equal(unpacked.long(), values)
