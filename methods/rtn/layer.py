"""The packed RTN layer: `GroupIntLinear` in the GPTQ checkpoint layout (no `g_idx`)."""
from __future__ import annotations

from methods.common.intlayer import GroupIntLinear


class RTNLinear(GroupIntLinear):
    """An RTN-quantized linear layer; storage, bits and compute path are `GroupIntLinear`'s."""


__all__ = ["RTNLinear"]
