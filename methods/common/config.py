"""Field validators that several methods' configs share (attach them in a config class body).

    class MyConfig(MethodConfig):
        bits: int = 4
        group_size: int = 128
        _no_bools = reject_bools("bits", "group_size")
        _group_size = row_or_positive_group("group_size")
"""
from __future__ import annotations

from typing import Any

from pydantic import field_validator


def _reject_bool(cls: type, value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


def _row_or_positive(cls: type, value: int) -> int:
    if value != -1 and value < 1:
        raise ValueError(f"must be -1 (one group per row) or a positive integer, got {value}")
    return value


def reject_bools(*fields: str) -> Any:
    """A before-validator for the integer `fields` that rejects booleans (pydantic would read
    `true` as 1): 'must be an integer, not a boolean'."""
    return field_validator(*fields, mode="before")(_reject_bool)


def row_or_positive_group(*fields: str) -> Any:
    """A validator for group-size `fields`: -1 (one group per row) or a positive integer."""
    return field_validator(*fields)(_row_or_positive)


__all__ = ["reject_bools", "row_or_positive_group"]
