"""RTN configuration."""
from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from harness.plugin import MethodConfig


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

    @field_validator("bits", "group_size", mode="before")
    @classmethod
    def _no_bools(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be an integer, not a boolean")
        return value

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError(f"must be -1 (one group per row) or a positive integer, got {value}")
        return value
