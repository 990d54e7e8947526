"""CRVQ configuration and bit-budget presets.

CRVQ is AQLM with one basic codebook over every input group plus `num_extended_codebooks`
codebooks over the few most important ("critical") input channels. Its optimisation and
block fine-tuning knobs are AQLM's own fields (same names, defaults and checks, taken from
`AQLMConfig`), so a CRVQ cell and an AQLM cell with the same params are optimised alike;
`aqlm_config()` is the AQLM config of the shared engine.
"""
from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from harness.plugin import MethodConfig
from methods.aqlm.config import AQLMConfig, Variant, variant_defaults
from methods.common.config import reject_bools

Importance = Literal["wa", "wa_max", "w", "random"]
Reorder = Literal["critical_first", "sorted"]

#: Nominal bit budget -> params: the paper's main setting, a 1x8-bit basic codebook over groups
#: of 8 plus 3 extended 8-bit codebooks on 2% of the input channels. Bits per weight
#: (without the permutation) on LLaMA-2-7B shapes: 1.0665; on a 576x576 layer: 1.4645.
PRESETS: dict[int, dict[str, Any]] = {
    1: {"nbits": 8, "in_group_size": 8, "num_extended_codebooks": 3, "extended_nbits": 8, "critical_ratio": 0.02},
}

#: What each `variant` sets (a field given explicitly in the params wins). `published` is the CRVQ
#: paper's algorithm: every channel sorted by importance and AQLM's plain k-means init (the
#: per-layer errors match the official code within 1%, tests/methods/crvq/test_published_fidelity.py).
#: `harness` is this harness's recipe: the critical channels in front and the others in their own
#: order, and the k-means weighted by the diagonal of the output error.
VARIANTS: dict[str, dict[str, Any]] = {
    "published": {"kmeans_metric": "euclidean", "reorder": "sorted"},
    "harness": {"kmeans_metric": "hessian", "reorder": "critical_first"},
}

#: AQLM fields CRVQ does not share: CRVQ has exactly one basic codebook of `nbits` bits.
_NOT_SHARED = ("num_codebooks", "nbits_per_codebook")


def _aqlm(name: str) -> Any:
    """AQLM's field `name` (default, bounds, description), reused as a CRVQ field."""
    return copy.copy(AQLMConfig.model_fields[name])


class CRVQConfig(MethodConfig):
    """Channel-relaxed VQ: importance-ordered input channels, a basic codebook over all groups
    and extended codebooks over the first `floor(in * critical_ratio / in_group_size)` groups.

    importance: how input channels are ranked (descending score = most critical first):
      wa      mean over rows of R_oi² · H_ii, R = W - VQ(W) (one-codebook k-means on W)
      wa_max  the same with the max over rows
      w       mean over rows of |W_oi|
      random  a seeded random permutation (ablation)
    reorder: the critical channels always come first, most important first; `sorted` (published)
      sorts every other channel by descending score too (groups of similar importance),
      `critical_first` keeps them in their original order (its groups are the layer's own). On
      the layer reference critical_first reaches a lower error for the same epochs (the basic
      codebook's groups then mix channels of all importances, as in plain AQLM).
    variant: `published` (default) = the CRVQ paper's algorithm (reorder sorted, plain k-means);
      `harness` = reorder critical_first and the Hessian-weighted k-means. Explicit fields win.
    """

    variant: Variant = Field(
        "published",
        description="published = the CRVQ paper's algorithm (reorder: sorted, kmeans_metric: euclidean); "
        "harness = this harness's recipe (reorder: critical_first, kmeans_metric: hessian). Explicit fields "
        "override the variant's",
    )

    nbits: int = Field(8, ge=1, le=16, description="bits b0 of the basic codebook (2**b0 entries, all groups)")
    in_group_size: int = _aqlm("in_group_size")
    num_extended_codebooks: int = Field(
        3, ge=1, le=15, description="extended codebooks E, covering the critical groups only"
    )
    extended_nbits: int | tuple[int, ...] = Field(
        8, description="bits per extended codebook: one value for all, or a list of E values"
    )
    critical_ratio: float = Field(
        0.02, ge=0, le=1, description="fraction of input channels in the critical region (floored to whole groups)"
    )
    importance: Importance = Field("wa", description="channel importance rule: wa, wa_max, w or random")
    reorder: Reorder = Field(
        "sorted",
        description="channel order: sorted = every channel by descending score (published CRVQ; the default "
        "of variant published); critical_first = the critical channels (by descending score) in front, the "
        "others in their original order (the default of variant harness)",
    )
    importance_kmeans_iters: int = Field(
        10, ge=0, description="Lloyd iterations of the one-codebook VQ behind the `wa`/`wa_max` scores"
    )
    # --- AQLM's optimisation knobs (same meaning and defaults) -----------------------------
    max_epochs: int = _aqlm("max_epochs")
    steps_per_epoch: int = _aqlm("steps_per_epoch")
    lr: float = _aqlm("lr")
    betas: tuple[float, float] = _aqlm("betas")
    relative_mse_tolerance: float = _aqlm("relative_mse_tolerance")
    beam_size: int = _aqlm("beam_size")
    kmeans_iters: int = _aqlm("kmeans_iters")
    kmeans_init: Literal["random", "kmeans++"] = _aqlm("kmeans_init")
    kmeans_metric: Literal["hessian", "euclidean"] = _aqlm("kmeans_metric")
    out_group_size: int = _aqlm("out_group_size")
    scale_nbits: int = _aqlm("scale_nbits")
    # --- AQLM's block fine-tuning knobs (same meaning and defaults) ------------------------
    finetune: bool = _aqlm("finetune")
    finetune_lr: float = _aqlm("finetune_lr")
    finetune_betas: tuple[float, float] = _aqlm("finetune_betas")
    finetune_max_epochs: int = _aqlm("finetune_max_epochs")
    finetune_batch_size: int = _aqlm("finetune_batch_size")
    finetune_max_sequences: int | None = _aqlm("finetune_max_sequences")
    finetune_val_fraction: float = _aqlm("finetune_val_fraction")
    finetune_patience: int = _aqlm("finetune_patience")
    finetune_keep_best: bool = _aqlm("finetune_keep_best")
    finetune_dtype: Literal["calibration", "bfloat16"] = _aqlm("finetune_dtype")

    late_fields = AQLMConfig.late_fields

    _variant = variant_defaults(VARIANTS)
    _no_bools = reject_bools(
        "nbits", "in_group_size", "num_extended_codebooks", "importance_kmeans_iters", "max_epochs",
        "steps_per_epoch", "beam_size", "kmeans_iters", "out_group_size", "scale_nbits",
        "finetune_max_epochs", "finetune_batch_size", "finetune_max_sequences", "finetune_patience",
    )

    @field_validator("extended_nbits", mode="before")
    @classmethod
    def _extended_nbits(cls, value: Any) -> Any:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16 for b in values):
            raise ValueError(f"must be an integer in 1..16 or a list of them, got {value!r}")
        return tuple(values) if isinstance(value, (list, tuple)) else value

    @model_validator(mode="after")
    def _consistent(self) -> "CRVQConfig":
        if isinstance(self.extended_nbits, tuple) and len(self.extended_nbits) != self.num_extended_codebooks:
            raise ValueError(
                f"`extended_nbits` lists {len(self.extended_nbits)} bit widths but `num_extended_codebooks` "
                f"is {self.num_extended_codebooks}; give one value for all or exactly one per codebook"
            )
        try:  # AQLM's own checks of the shared knobs (out_group_size, scale_nbits, betas)
            self.aqlm_config()
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValueError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        return self

    @property
    def extended_bits(self) -> list[int]:
        """Bits of each extended codebook, a list of `num_extended_codebooks` integers."""
        if isinstance(self.extended_nbits, tuple):
            return list(self.extended_nbits)
        return [int(self.extended_nbits)] * self.num_extended_codebooks

    def aqlm_config(self) -> AQLMConfig:
        """The AQLM config of the shared engine (optimisation, fine-tuning): one codebook of
        `nbits` bits and every shared knob as set here."""
        shared = {name: getattr(self, name) for name in shared_field_names() if name in type(self).model_fields}
        shared.pop("variant", None)  # the AQLM engine gets the resolved fields (kmeans_metric), not the variant
        return AQLMConfig(num_codebooks=1, nbits_per_codebook=self.nbits, **shared)


def shared_field_names() -> list[str]:
    """AQLM fields a CRVQ config must carry too (a test checks CRVQConfig has all of them)."""
    return [name for name in AQLMConfig.model_fields if name not in _NOT_SHARED]
