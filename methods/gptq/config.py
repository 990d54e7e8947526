"""GPTQ configuration."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.plugin import MethodConfig
from methods.common.config import reject_bools, row_or_positive_group

Backend = Literal["native", "auto-gptq", "gptqmodel"]


class GPTQConfig(MethodConfig):
    """GPTQ parameters (names follow the GPTQ / AutoGPTQ conventions where they exist).

    bits: code width (2, 3, 4 or 8 — the widths of the GPTQ checkpoint format).
    group_size: consecutive input columns sharing a scale and zero point; -1 means one group per
      row. It need not divide `in_features`: the last group of a row is then shorter (as in
      GPTQ), and the layer stores G = ceil(in / group_size) groups.
    symmetric: symmetric grid with the fixed zero point 2**(bits-1) (GPTQ's `sym`).
    act_order: quantize columns by descending diag(H) (GPTQ's `desc_act`).
    static_groups: compute every group's grid from the original weight before any update.
    damp: relative damping λ; H += λ·mean(diag H)·I (GPTQ's `damp_percent`).
    block_size: columns per lazy batch update.
    backend: "native" (this package) or an external implementation run on the same H.
    """

    bits: Literal[2, 3, 4, 8] = Field(4, description="bits per code: 2, 3, 4 or 8")
    group_size: int = Field(
        128,
        description="input columns per scale/zero group, -1 = one per row; need not divide "
        "in_features (shorter last group)",
    )
    symmetric: bool = Field(False, description="symmetric grid with zero point 2**(bits-1) (GPTQ `sym`)")
    act_order: bool = Field(
        False, description="process columns by descending diag(H) (GPTQ `desc_act`); stores g_idx"
    )
    static_groups: bool = Field(
        False, description="compute all group grids from the original weight up front"
    )
    damp: float = Field(0.01, gt=0, description="relative damping: H += damp * mean(diag H) * I")
    block_size: int = Field(128, ge=1, description="columns per lazy batch update")
    backend: Backend = Field(
        "native",
        description="'native' (default), or the external 'gptqmodel' / 'auto-gptq' on the same H "
        "(see methods/gptq/BACKENDS.md)",
    )

    _no_bools = reject_bools("bits", "group_size", "block_size")
    _group_size = row_or_positive_group("group_size")

    def stores_g_idx(self, in_features: int) -> bool:
        """Whether a layer with `in_features` inputs stores (and counts) `g_idx`.

        Only act-order without static groups makes the group of a column depend on the
        permutation; with static groups (or a single group per row) `g_idx[i]` is
        `i // group_size` and carries no information.
        """
        gs = in_features if self.group_size == -1 else self.group_size
        return self.act_order and not self.static_groups and gs < in_features


__all__ = ["Backend", "GPTQConfig"]
