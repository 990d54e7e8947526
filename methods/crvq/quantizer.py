"""`CRVQQuantizer`: channel-relaxed VQ on the shared calibration pipeline.

Everything but the channel ranking and the codebook layout is AQLM's: the per-layer engine
(`AQLMQuantizer.run_algorithm`: residual k-means init, Adam codebook steps, code search) and
block fine-tuning (`AQLMQuantizer.finetune_block`, which finds `CRVQLinear` as an
`AQLMLinear` and so tunes the extended codebooks too) run through an `AQLMQuantizer` built
from the same config (`CRVQConfig.aqlm_config()`), so a CRVQ cell and an AQLM cell with the
same params are optimised and fine-tuned identically.
"""
from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import torch
from torch import nn

from harness.plugin import BlockData, LayerStats, QuantContext, Quantizer
from methods.aqlm.layer import AQLMLinear
from methods.aqlm.quantizer import AQLMQuantizer, aqlm_flops, checked_inputs
from methods.crvq.algorithm import CRVQResult, critical_group_count, crvq_quantize
from methods.crvq.config import PRESETS, VARIANTS, CRVQConfig
from methods.crvq.importance import HIST_LOG10_EDGES, score_histogram
from methods.crvq.layer import CRVQLinear

logger = logging.getLogger(__name__)

_QUANTILES = (0.5, 0.9, 0.99)


class CRVQQuantizer(Quantizer):
    """CRVQ: rank input channels, permute, then AQLM with a basic codebook over all groups and
    extended codebooks over the critical groups (see `methods/crvq/algorithm.py`)."""

    name: ClassVar[str] = "crvq"
    Config: ClassVar[type[CRVQConfig]] = CRVQConfig
    layer_class: ClassVar[type[CRVQLinear]] = CRVQLinear
    requires_calibration: ClassVar[bool] = True
    #: Budget 1: basic 1 x 8 bits, group 8, plus 3 extended 8-bit codebooks on 2% of the input
    #: channels (the paper's main setting).
    budget_presets: ClassVar[dict[int, dict[str, Any]]] = PRESETS
    preset_hint: ClassVar[str] = (
        "give explicit `params: {nbits: ..., num_extended_codebooks: ..., extended_nbits: ..., critical_ratio: ...}`"
    )
    variants: ClassVar[dict[str, dict[str, Any]]] = VARIANTS
    #: `crvq`, `crvq-harness`, plus `-field=value` per overridden field of `variants` (AQLM's rule).
    default_label = classmethod(AQLMQuantizer.default_label.__func__)
    config: CRVQConfig

    def __init__(self, config: CRVQConfig):
        super().__init__(config)
        #: The AQLM engine (optimisation and block fine-tuning) with this config's shared knobs.
        self.engine = AQLMQuantizer(config.aqlm_config())
        self._warned_fallback = False


    def flops_for_shape(self, out_features: int, in_features: int) -> float:
        """Expected FLOPs of `quantize_linear`: the importance VQ (`wa`, `wa_max`) plus the AQLM
        engine with the basic codebook over all groups and the extended ones over the critical groups."""
        cfg = self.config
        groups = in_features // cfg.in_group_size
        n_crit = critical_group_count(in_features, cfg.critical_ratio, cfg.in_group_size)
        books = [(cfg.nbits, groups)] + [(b, n_crit) for b in cfg.extended_bits if n_crit]
        scores = cfg.importance_kmeans_iters * 2.0 * out_features * in_features * (1 << cfg.nbits)
        return aqlm_flops(out_features, in_features, books, cfg) + (scores if cfg.importance.startswith("wa") else 0.0)

    def finetune_sequence_passes(self, num_sequences: int) -> float:
        """As AQLM's with the same params."""
        return self.engine.finetune_sequence_passes(num_sequences)

    def quantize_linear(
        self, linear: nn.Linear, stats: LayerStats | None, ctx: QuantContext
    ) -> CRVQLinear | AQLMLinear:
        """Quantize `linear.weight` [out, in] with H = `stats.H`.

        Returns a `CRVQLinear` on the weight's device, or a one-codebook `AQLMLinear` when the
        layer has no critical group (floor(in · critical_ratio / g) == 0; logged as `fallback`).
        Appends to `ctx.log`: layer, rel_error (E(Ŵ)/tr(W H Wᵀ) of the stored representation),
        init_rel_error, epochs, seconds, importance, n_crit, critical_ratio (effective),
        fallback, and a summary of the importance scores `importance_scores`: quantiles q50, q90,
        q99, max, mean, the critical channels' share of the total score (`critical_share`), the
        lowest critical score (`threshold`) and `hist` = {log10_edges, counts}, the channels per
        bin of log10(score / mean) (`methods.crvq.importance.score_histogram`). Absent for the
        `random` rule and for plain-VQ fallbacks (no scores).
        """
        cfg = self.config
        start = time.perf_counter()
        W, H = checked_inputs(linear, stats, ctx, cfg.in_group_size)

        def engine(Wp: torch.Tensor, Hp: torch.Tensor, specs: list) -> Any:
            return self.engine.run_algorithm(Wp, Hp, specs, ctx)

        result = crvq_quantize(
            W, H, nbits=cfg.nbits, extended_nbits=cfg.extended_bits, critical_ratio=cfg.critical_ratio,
            importance=cfg.importance, in_group_size=cfg.in_group_size, generator=ctx.generator,
            reorder=cfg.reorder, importance_kmeans_iters=cfg.importance_kmeans_iters, engine=engine,
        )
        r = result.aqlm
        bias = None if linear.bias is None else linear.bias.detach()
        if result.fallback:
            layer: CRVQLinear | AQLMLinear = AQLMLinear.from_result(
                r.codebooks, r.codes, r.groups, r.nbits, r.scales, in_features=W.shape[1], bias=bias
            )
            # warn once per run, then at info level: a low ratio can hit every narrow layer
            logger.log(
                logging.INFO if self._warned_fallback else logging.WARNING,
                "crvq %s: in_features=%d holds no critical group (floor(%d x %g / %d) = 0): plain "
                "one-codebook VQ for this layer (`fallback` in its layer log)", ctx.layer_name, W.shape[1],
                W.shape[1], cfg.critical_ratio, cfg.in_group_size,
            )
            self._warned_fallback = True
        else:
            layer = CRVQLinear.from_crvq(
                r.codebooks, r.codes, r.nbits, r.scales, result.perm, result.n_crit, in_features=W.shape[1], bias=bias
            )
        layer = layer.to(linear.weight.device)
        seconds = time.perf_counter() - start
        ctx.log.append(_log_entry(ctx.layer_name, cfg, result, W.shape[1], seconds))
        logger.info(
            "crvq %s: relative output error %.4g after %d epochs (init %.4g), %d critical groups "
            "(%.2f%% of inputs), %.1f s", ctx.layer_name, r.rel_error, r.epochs, r.history[0],
            result.n_crit, 100 * result.n_crit * cfg.in_group_size / W.shape[1], seconds,
        )
        return layer

    def finetunes_blocks(self) -> bool:
        """Whether block fine-tuning runs: exactly when it runs for AQLM with the same params."""
        return self.engine.finetunes_blocks()

    def finetune_block(self, block: nn.Module, inputs: BlockData, targets: torch.Tensor, ctx: QuantContext) -> None:
        """AQLM's block fine-tuning with this config's `finetune*` knobs; `CRVQLinear` layers are
        `AQLMLinear`s, so their basic and extended codebooks and scales are tuned (codes and
        permutations fixed)."""
        return self.engine.finetune_block(block, inputs, targets, ctx)


def _log_entry(name: str, cfg: CRVQConfig, result: CRVQResult, in_features: int, seconds: float) -> dict[str, Any]:
    r = result.aqlm
    entry: dict[str, Any] = {
        "layer": name,
        "rel_error": r.rel_error,
        "init_rel_error": r.history[0],
        "epochs": r.epochs,
        "seconds": round(seconds, 3),
        "importance": cfg.importance,
        "reorder": cfg.reorder,
        "n_crit": result.n_crit,
        "critical_ratio": result.n_crit * cfg.in_group_size / in_features,
        "fallback": result.fallback,
    }
    if result.scores is not None:
        s = result.scores.double().cpu()
        q = torch.quantile(s, torch.tensor(_QUANTILES, dtype=torch.float64)).tolist()
        critical = result.perm[: result.n_crit * cfg.in_group_size].cpu()
        entry["importance_scores"] = {
            **{f"q{round(100 * p)}": v for p, v in zip(_QUANTILES, q)},
            "max": float(s.max()),
            "mean": float(s.mean()),
            "critical_share": float(s[critical].sum() / s.sum().clamp_min(1e-300)),
            "threshold": float(s[critical].min()),
            "hist": {"log10_edges": list(HIST_LOG10_EDGES), "counts": score_histogram(s)},
        }
    return entry
