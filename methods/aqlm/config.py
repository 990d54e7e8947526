"""AQLM configuration and bit-budget presets."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from harness.plugin import MethodConfig
from methods.common.config import reject_bools

#: Nominal bit budget -> params. Bits per weight are about Σ b_m / g plus the codebooks
#: (2**b · g · 16 bits per codebook) and one 16-bit scale per row, e.g. 1x8 g8 on a 576x576
#: layer: 1 + (256·8·16 + 576·16)/576² = 1.13; on LLaMA-2-7B shapes 1.0045.
PRESETS: dict[int, dict[str, Any]] = {
    1: {"num_codebooks": 1, "nbits_per_codebook": 8, "in_group_size": 8},
    2: {"num_codebooks": 2, "nbits_per_codebook": 8, "in_group_size": 8},
}

#: The AQLM paper's 2-bit setting (one 16-bit codebook, group 8): a 65,536-entry codebook
#: makes the code search ~256x costlier than 2x8 bits, so it is meant for GPU runs. Use it
#: in a suite as `budgets: [2]` with `params: {num_codebooks: 1, nbits_per_codebook: 16}`.
PAPER_2BIT_1X16: dict[str, Any] = {"num_codebooks": 1, "nbits_per_codebook": 16, "in_group_size": 8}


Variant = Literal["published", "harness"]

#: What each `variant` sets (a field given explicitly in the params wins). `published` is the
#: AQLM paper's algorithm (plain k-means init); `harness` is this harness's improvement (k-means
#: weighted by the diagonal of the output error: up to 9% lower per-layer error at 1 bit).
VARIANTS: dict[str, dict[str, Any]] = {
    "published": {"kmeans_metric": "euclidean"},
    "harness": {"kmeans_metric": "hessian"},
}


def apply_variant(data: Any, variants: dict[str, dict[str, Any]], default: str = "published") -> Any:
    """Params `data` (a dict, before validation) with the fields of its `variant` filled in
    where not given explicitly; anything else is returned unchanged (pydantic reports it)."""
    if not isinstance(data, dict):
        return data
    variant = data.get("variant", default)
    if variant not in variants:
        return data  # the Literal field reports the allowed values
    return {**variants[variant], **data}


def variant_defaults(variants: dict[str, dict[str, Any]]) -> Any:
    """A before-validator for a config class body: fills in the fields of the params' `variant`
    (`apply_variant`)."""

    def fill(cls: type, data: Any) -> Any:
        return apply_variant(data, variants)

    return model_validator(mode="before")(fill)


def variant_label(name: str, config: Any, variants: dict[str, dict[str, Any]]) -> str:
    """The method label of a suite line without `label`: `name` for the published algorithm,
    `name-harness` for the harness variant, plus `-field=value` for each field a variant sets
    that the params override (e.g. `crvq-reorder=critical_first`), so every table and plot says
    which algorithm ran."""
    chosen = variants[config.variant]
    parts = [name] + (["harness"] if config.variant != "published" else [])
    parts += [f"{field}={getattr(config, field)}" for field, value in chosen.items() if getattr(config, field) != value]
    return "-".join(parts)

#: The fields with one supported value: field -> (value, what it means in the error message).
_SUPPORTED_ONLY: dict[str, tuple[int, str]] = {
    "out_group_size": (1, ""),
    "scale_nbits": (0, " (one float16 scale per output row)"),
}


class AQLMConfig(MethodConfig):
    """Additive quantization: M codebooks of 2**b entries over vectors of `in_group_size` inputs.

    `variant: published` (default) is the published AQLM algorithm: plain k-means init.
    `variant: harness` sets this harness's improvement, a k-means weighted by the diagonal of
    the output error (`kmeans_metric: hessian`); a field given explicitly wins over the variant.

    The optimisation alternates `steps_per_epoch` Adam steps on codebooks and scales with one
    code-search pass, until the relative improvement of the layer-output error in an epoch
    falls below `relative_mse_tolerance` (or `max_epochs`). Block fine-tuning (`finetune`)
    then tunes codebooks, scales and the block's norms against the full-precision block outputs.
    """

    variant: Variant = Field(
        "published",
        description="published = the AQLM paper's algorithm (plain k-means init); harness = this harness's "
        "improvement (kmeans_metric: hessian). Explicit fields override the variant's",
    )
    num_codebooks: int = Field(1, ge=1, le=16, description="number of additive codebooks M")
    nbits_per_codebook: int = Field(
        8, ge=1, le=16, description="bits per code b; each codebook has 2**b entries"
    )
    in_group_size: int = Field(8, ge=1, description="vector length g along the input dim (must divide in_features)")
    out_group_size: int = Field(1, description="output rows per vector (only 1 is supported)")
    scale_nbits: int = Field(0, description="0 = one float16 scale per output row (the only supported value)")
    max_epochs: int = Field(100, ge=1, description="most epochs (codebook steps + code search) per layer")
    steps_per_epoch: int = Field(100, ge=0, description="Adam steps on codebooks and scales per epoch")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate of the codebook step")
    betas: tuple[float, float] = Field((0.0, 0.95), description="Adam betas of the codebook step")
    relative_mse_tolerance: float = Field(
        0.01, ge=0, description="stop once an epoch improves the output error by less than this fraction"
    )
    beam_size: int = Field(1, ge=1, description="code search beam (1 = greedy coordinate descent)")
    kmeans_iters: int = Field(50, ge=0, description="Lloyd iterations of the residual k-means init")
    kmeans_init: Literal["random", "kmeans++"] = Field(
        "random", description="k-means seeding: random = K distinct vectors; kmeans++ = D²-weighted draws"
    )
    kmeans_metric: Literal["hessian", "euclidean"] = Field(
        "euclidean",
        description="k-means distance: euclidean = plain k-means on W/s (published AQLM; the default of "
        "variant published); hessian = coordinates weighted by s_o²·H_ii, the diagonal of the output error "
        "(the default of variant harness)",
    )
    finetune: bool = Field(False, description="block fine-tuning after each block's linears are quantized")
    finetune_lr: float = Field(1e-4, gt=0, description="Adam learning rate of block fine-tuning")
    finetune_betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas of block fine-tuning")
    finetune_max_epochs: int = Field(10, ge=1, description="most passes over the block's calibration inputs")
    finetune_batch_size: int = Field(
        8, ge=1,
        description="calibration sequences per fine-tuning step, rounded to whole pipeline batches (8 "
        "sequences by default; the gradients of several batches are accumulated)",
    )
    finetune_max_sequences: int | None = Field(
        None, ge=1,
        description="fine-tune on the first this many calibration sequences only (train + validation, rounded "
        "up to whole pipeline batches); None = all. Bounds the cost on slow machines",
    )
    finetune_val_fraction: float = Field(
        0.1, ge=0, lt=1, description="fraction of calibration sequences held out for early stopping"
    )
    finetune_patience: int = Field(
        3, ge=1, description="epochs without validation improvement before stopping (published AQLM: 3)"
    )
    finetune_keep_best: bool = Field(True, description="restore the parameters of the best validation epoch")
    finetune_dtype: Literal["calibration", "bfloat16"] = Field(
        "calibration",
        description="dtype of the fine-tuning forward and backward passes: calibration = the calibration's "
        "compute dtype (as the targets were computed); bfloat16 = autocast (parameters, Adam state and the "
        "loss stay float32; ~1.6x faster on GPUs and CPUs with AVX512-BF16, slower on CPUs without)",
    )

    late_fields = frozenset({"finetune_dtype"})

    _variant = variant_defaults(VARIANTS)
    _no_bools = reject_bools(
        "num_codebooks", "nbits_per_codebook", "in_group_size", "out_group_size", "scale_nbits",
        "max_epochs", "steps_per_epoch", "beam_size", "kmeans_iters", "finetune_max_epochs",
        "finetune_batch_size", "finetune_max_sequences", "finetune_patience",
    )

    @field_validator("out_group_size", "scale_nbits")
    @classmethod
    def _supported_only(cls, value: int, info: ValidationInfo) -> int:
        supported, meaning = _SUPPORTED_ONLY[info.field_name]
        if value != supported:
            raise ValueError(f"only {info.field_name} {supported}{meaning} is supported, got {value}")
        return value

    @field_validator("betas", "finetune_betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"Adam betas must lie in [0, 1), got {list(value)}")
        return value
