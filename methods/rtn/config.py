"""RTN configuration."""
from __future__ import annotations

from pydantic import Field

from harness.plugin import MethodConfig
from methods.common.config import reject_bools, row_or_positive_group


class RTNConfig(MethodConfig):
    """Round-to-nearest parameters.

    bits: code width, 1..8 (2**bits levels).
    group_size: consecutive input weights of one row sharing a scale and zero point; -1 means
      one group per row. Must divide every quantized layer's `in_features` (checked when a
      layer is quantized).
    symmetric: grid symmetric around 0 with the fixed zero point 2**(bits-1) (GPTQ's `sym`).
    """

    bits: int = Field(4, ge=1, le=8, description="bits per code (1..8)")
    group_size: int = Field(128, description="-1 (one group per row) or a positive divisor of in_features")
    symmetric: bool = Field(False, description="symmetric grid with zero point 2**(bits-1)")

    _no_bools = reject_bools("bits", "group_size")
    _group_size = row_or_positive_group("group_size")
