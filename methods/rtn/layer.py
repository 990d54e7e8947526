"""The packed RTN layer: `GroupIntLinear` in the GPTQ checkpoint layout (no `g_idx`)."""
from __future__ import annotations

from typing import Any

from methods.common.intlayer import GroupIntLinear


class RTNLinear(GroupIntLinear):
    """An RTN-quantized linear layer; storage, bits and compute path are `GroupIntLinear`'s."""

    @classmethod
    def bits_per_weight(cls, shape: tuple[int, int], config: Any) -> tuple[float, float]:
        """`GroupIntLinear.group_int_bits`; RTN needs a group size that divides `in_features`."""
        if config.group_size != -1 and shape[1] % config.group_size:
            raise ValueError(f"rtn: group_size={config.group_size} does not divide in_features={shape[1]}")
        return super().bits_per_weight(shape, config)


__all__ = ["RTNLinear"]
