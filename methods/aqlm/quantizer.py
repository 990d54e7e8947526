"""`AQLMQuantizer`: additive multi-codebook quantization on the shared calibration pipeline."""
from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from harness.plugin import BlockData, LayerStats, QuantContext, Quantizer
from methods.aqlm.algorithm import AQLMResult, CodebookSpec, aqlm_quantize
from methods.aqlm.config import PRESETS, VARIANTS, AQLMConfig, variant_label
from methods.aqlm.finetune import finetune_block as run_block_finetuning, finetune_options
from methods.aqlm.layer import AQLMLinear

logger = logging.getLogger(__name__)


class AQLMQuantizer(Quantizer):
    """AQLM: residual k-means init, then alternating Adam codebook steps and greedy/beam code
    search through H, per linear layer (see `methods/aqlm/algorithm.py`); optionally block
    fine-tuning after each block (`methods/aqlm/finetune.py`)."""

    name: ClassVar[str] = "aqlm"
    Config: ClassVar[type[AQLMConfig]] = AQLMConfig
    layer_class: ClassVar[type[AQLMLinear]] = AQLMLinear
    requires_calibration: ClassVar[bool] = True
    #: Budget 1: 1 codebook x 8 bits, group 8. Budget 2: 2 x 8 bits, group 8 (the paper's
    #: 1 x 16 bits is `methods.aqlm.config.PAPER_2BIT_1X16`, given as explicit params).
    budget_presets: ClassVar[dict[int, dict[str, Any]]] = PRESETS
    preset_hint: ClassVar[str] = "give explicit `params: {num_codebooks: ..., nbits_per_codebook: ..., in_group_size: ...}`"
    variants: ClassVar[dict[str, dict[str, Any]]] = VARIANTS
    config: AQLMConfig

    @classmethod
    def default_label(cls, config: AQLMConfig) -> str:
        """`<name>` for the published algorithm, `<name>-harness` for the harness variant, plus
        `-field=value` for each field of `cls.variants` overridden (`methods.aqlm.config.variant_label`)."""
        return variant_label(cls.name, config, cls.variants)

    def flops_for_shape(self, out_features: int, in_features: int) -> float:
        """Expected FLOPs of `quantize_linear` (`aqlm_flops` with every codebook over all groups)."""
        groups = in_features // self.config.in_group_size
        return aqlm_flops(out_features, in_features, [(self.config.nbits_per_codebook, groups)] * self.config.num_codebooks,
                          self.config)

    def finetune_sequence_passes(self, num_sequences: int) -> float:
        """Block fine-tuning: the used sequences x `finetune_max_epochs` (early stopping may end sooner)."""
        cfg = self.config
        if not cfg.finetune:
            return 0.0
        return min(num_sequences, cfg.finetune_max_sequences or num_sequences) * cfg.finetune_max_epochs

    def codebook_specs(self) -> list[CodebookSpec]:
        """The codebooks of every layer: `num_codebooks` x `nbits_per_codebook`, all groups."""
        return [CodebookSpec(self.config.nbits_per_codebook)] * self.config.num_codebooks

    def run_algorithm(
        self, W: torch.Tensor, H: torch.Tensor, specs: list[CodebookSpec], ctx: QuantContext
    ) -> AQLMResult:
        """`aqlm_quantize` with this config, a per-layer progress bar (epoch, relative error)
        and the layer's random draws from `ctx.generator`. W [out, in], H [in, in] on ctx.device."""
        cfg = self.config
        bar = tqdm(
            total=cfg.max_epochs, desc=f"aqlm {ctx.layer_name}", unit="epoch", leave=False,
            disable=not ctx.progress,
        )

        def progress(epoch: int, rel_error: float) -> None:
            bar.n = epoch
            bar.set_postfix(rel_error=f"{rel_error:.4g}", refresh=True)

        try:
            return aqlm_quantize(
                W, H, specs, in_group_size=cfg.in_group_size, generator=ctx.generator,
                max_epochs=cfg.max_epochs, steps_per_epoch=cfg.steps_per_epoch, lr=cfg.lr,
                betas=cfg.betas, relative_mse_tolerance=cfg.relative_mse_tolerance,
                beam_size=cfg.beam_size, kmeans_iters=cfg.kmeans_iters, kmeans_init=cfg.kmeans_init,
                kmeans_metric=cfg.kmeans_metric,
                callback=progress,
            )
        finally:
            bar.close()

    def quantize_linear(
        self, linear: nn.Linear, stats: LayerStats | None, ctx: QuantContext
    ) -> AQLMLinear:
        """Quantize `linear.weight` [out, in] with H = `stats.H`; returns an `AQLMLinear` on the
        weight's device. Appends {layer, rel_error, init_rel_error, epochs, seconds} to `ctx.log`
        (rel_error = E(Ŵ) / tr(W H Wᵀ) of the stored float16 representation)."""
        cfg = self.config
        start = time.perf_counter()
        W, H = checked_inputs(linear, stats, ctx, cfg.in_group_size)
        result = self.run_algorithm(W, H, self.codebook_specs(), ctx)
        bias = None if linear.bias is None else linear.bias.detach()
        layer = AQLMLinear.from_result(
            result.codebooks, result.codes, result.groups, result.nbits, result.scales,
            in_features=W.shape[1], bias=bias,
        ).to(linear.weight.device)
        seconds = time.perf_counter() - start
        ctx.log.append({
            "layer": ctx.layer_name,
            "rel_error": result.rel_error,
            "init_rel_error": result.history[0],
            "epochs": result.epochs,
            "seconds": round(seconds, 3),
        })
        logger.info(
            "aqlm %s: relative output error %.4g after %d epochs (init %.4g), %.1f s",
            ctx.layer_name, result.rel_error, result.epochs, result.history[0], seconds,
        )
        return layer

    def finetunes_blocks(self) -> bool:
        """True when `config.finetune` (the pipeline then keeps the full-precision block outputs)."""
        return self.config.finetune

    def finetune_block(self, block: nn.Module, inputs: BlockData, targets: torch.Tensor, ctx: QuantContext) -> None:
        """Block fine-tuning (config `finetune`; a no-op otherwise): Adam on the block's `AQLMLinear`
        codebooks and scales (codes frozen) and its norm weights against the full-precision
        block outputs `targets` [n, seqlen, hidden] on `inputs` (`harness.plugin.BlockData`),
        with a validation split and early stopping (`methods/aqlm/finetune.py`). Appends
        {finetune_epochs, finetune_best_epoch, finetune_train_mse_start, finetune_train_mse_end,
        finetune_val_mse_start, finetune_val_mse_best, finetune_val_mse_history, finetune_seconds}
        to `ctx.log`."""
        cfg = self.config
        if not cfg.finetune:
            return None
        if targets is None:
            raise ValueError(f"aqlm: block fine-tuning of '{ctx.layer_name}' got no full-precision targets")
        entry = run_block_finetuning(block, inputs, targets, generator=ctx.generator, **finetune_options(cfg))
        ctx.log.append(entry)
        logger.info(
            "aqlm %s: fine-tuned %d epochs, val MSE %s -> %s (train %s -> %s), %.1f s",
            ctx.layer_name, entry["finetune_epochs"], _fmt(entry["finetune_val_mse_start"]),
            _fmt(entry["finetune_val_mse_best"]), _fmt(entry["finetune_train_mse_start"]),
            _fmt(entry["finetune_train_mse_end"]), entry["finetune_seconds"],
        )
        return None


#: Epochs a layer typically runs before an epoch improves the error by less than the default
#: `relative_mse_tolerance` 0.01 (about 6 on the layer reference, see suites/quickstart.yaml).
TYPICAL_EPOCHS = 6


def aqlm_flops(out_features: int, in_features: int, codebooks: list[tuple[int, int]], cfg: Any) -> float:
    """Expected FLOPs of `aqlm_quantize` on an [out, in] layer; `codebooks`: (bits, covered
    groups) per codebook, `cfg` an AQLMConfig. Init: `kmeans_iters` distance passes per codebook
    (2·out·G_m·g·K_m); per epoch (min(max_epochs, TYPICAL_EPOCHS)): `steps_per_epoch` error
    gradients (2·out·in² each) and one code pass, per covered group the [out, K] scores and the
    rank-g update of (Ŵ-W)H (2·out·g·(K + in)), times the beam size."""
    g = cfg.in_group_size
    init = sum(cfg.kmeans_iters * 2 * out_features * n * g * (1 << b) for b, n in codebooks)
    gradients = cfg.steps_per_epoch * 2.0 * out_features * in_features**2
    codes = cfg.beam_size * sum(2.0 * out_features * n * g * ((1 << b) + in_features) for b, n in codebooks)
    return float(init + min(cfg.max_epochs, TYPICAL_EPOCHS) * (gradients + codes))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def checked_inputs(
    linear: nn.Linear, stats: LayerStats | None, ctx: QuantContext, in_group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] float32 and H [in, in] float64 on ctx.device, validated."""
    if stats is None:
        raise ValueError(f"aqlm: layer '{ctx.layer_name}' got no calibration statistics (H)")
    out_features, in_features = linear.weight.shape
    if in_features % in_group_size:
        divisors = [d for d in (4, 8, 16, 32) if in_features % d == 0]
        raise ValueError(
            f"aqlm: layer '{ctx.layer_name}' has in_features={in_features}, which in_group_size="
            f"{in_group_size} does not divide; set `in_group_size` to a divisor of {in_features}"
            + (f" (e.g. {divisors})" if divisors else "")
        )
    if tuple(stats.H.shape) != (in_features, in_features):
        raise ValueError(
            f"aqlm: layer '{ctx.layer_name}': H has shape {list(stats.H.shape)}, expected "
            f"[{in_features}, {in_features}]"
        )
    W = linear.weight.detach().to(device=ctx.device, dtype=torch.float32)
    H = stats.H.detach().to(device=ctx.device, dtype=torch.float64)
    if not bool(torch.isfinite(W).all()) or not bool(torch.isfinite(H).all()):
        raise ValueError(f"aqlm: layer '{ctx.layer_name}' has non-finite weights or H (NaN or inf)")
    return W, H
