"""The cell plan of `harness run --dry-run`: per cell, bits from the model's config alone,
the memory it needs and an estimated time — without loading weights or data (offline for
shape presets and hub ids with a preset, see `harness.models.shapes`).

Estimates, not measurements. Time is a FLOP model divided by a device profile's effective
throughput (`PROFILES`, each stating its basis): model passes (calibration, block and
end-to-end fine-tuning, perplexity, zero-shot) cost 2·(block linears + head) FLOPs per token
plus 2·seqlen·hidden per token and block for attention; H accumulation 2·in² per token and
linear group; a method's own optimisation comes from `Quantizer.flops_for_shape` and its block
fine-tuning from `Quantizer.finetune_sequence_passes` (both upper-bound-ish: early stopping
usually ends sooner). Memory is the largest phase: weights, one calibration batch's
activations, one block's H (float64) and the layer being optimised on the compute device;
the calibration activations (and fine-tuning targets) in host memory, as the pipeline keeps them.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.suite import Cell

__all__ = ["CellPlan", "DeviceProfile", "PROFILES", "plan_cells"]

GiB = 2**30
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Approximate evaluation tokens per dataset (LLaMA-2 / SmolLM2 tokenizers); c4 is 256 windows.
EVAL_TOKENS = {"wikitext2": 340_000, "ptb": 100_000, "embedded": 57_000}
#: Zero-shot tasks: (examples, answer choices, tokens per request), approximately.
ZERO_SHOT_REQUESTS = {
    "winogrande": (1267, 2, 40), "piqa": (1838, 2, 60), "hellaswag": (10042, 4, 110), "arc_easy": (2376, 4, 50),
    "arc_challenge": (1172, 4, 55), "boolq": (3270, 2, 160), "embedded_cloze4": (80, 4, 40),
    "embedded_lastword": (200, 1, 26),
}
PIPELINE_BATCH = 8  # sequences per calibration batch (harness.pipeline.run_pipeline)


@dataclass(frozen=True)
class DeviceProfile:
    """Effective throughputs (TFLOP/s, GB/s) assumed for one kind of device, and their basis."""

    name: str
    half_tflops: float  # model passes in float16/bfloat16
    fp32_tflops: float  # model passes in float32 and the float32 H products
    method_tflops: float  # a method's per-layer optimisation (many small kernels)
    memory_gbps: float  # weight streaming during greedy decoding
    basis: str


PROFILES = {
    "cuda": DeviceProfile(
        "cuda", 300.0, 40.0, 10.0, 2000.0,
        "assumed for one H100-class GPU: 300 TFLOP/s for fp16/bf16 passes (~30% of the dense bf16 peak of "
        "989), 40 for fp32 (~60% of 67), 10 for method optimisation, 2 TB/s for decoding",
    ),
    "cpu": DeviceProfile(
        "cpu", 0.4, 0.14, 0.05, 10.0,
        "measured on this repo's 2-core CPU: 0.14 TFLOP/s for fp32 passes (quickstart reference cell: 110 "
        "windows of 512 tokens in 111 s), 0.4 under bf16 autocast (GPTQ on the quickstart model: 287 s in fp32, "
        "121 s in bf16, bench/results/gptq4_quantize_*.json), 0.05 for AQLM layer optimisation (quickstart AQLM "
        "cell, per-layer seconds)",
    ),
}


@dataclass(frozen=True)
class ModelFacts:
    """Shapes of one model from its config: linears of all blocks, one input dim per linear
    group (the H products), and the sizes that drive activations and the head."""

    source: str
    blocks: int
    hidden: int
    intermediate: int
    vocab: int
    total_weights: int
    linear_shapes: tuple[tuple[int, int], ...]
    group_inputs: tuple[int, ...]
    default_seqlen: int

    @property
    def linear_weights(self) -> int:
        return sum(o * i for o, i in self.linear_shapes)

    def forward_flops(self, seqlen: int, *, head: bool) -> float:
        """FLOPs per token of one forward pass (linears, attention, optionally the head)."""
        attention = 2 * seqlen * self.hidden * self.blocks
        return 2 * self.linear_weights + attention + (2 * self.vocab * self.hidden if head else 0)


@functools.lru_cache(maxsize=16)
def model_facts(model: str) -> ModelFacts:
    """`ModelFacts` of a shape preset, the embedded alias, a config/model directory or a hub id."""
    from harness.models.adapters import get_adapter
    from harness.models.shapes import meta_model, resolve_config

    config, source = resolve_config(model)
    lm = meta_model(config)
    adapter = get_adapter(lm)
    shapes, inputs = [], []
    for block in adapter.blocks(lm):
        for group in adapter.linear_groups(block):
            linears = [block.get_submodule(name) for name in group]
            shapes += [(m.out_features, m.in_features) for m in linears]
            inputs.append(linears[0].in_features)
    total = sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values())
    hidden = int(config.hidden_size)
    return ModelFacts(
        source=source, blocks=len(adapter.blocks(lm)), hidden=hidden,
        intermediate=max(o for o, _ in shapes), vocab=int(config.vocab_size), total_weights=total,
        linear_shapes=tuple(shapes), group_inputs=tuple(inputs), default_seqlen=adapter.default_seqlen(config),
    )


@dataclass
class CellPlan:
    """One cell's plan: closed-form bits, peak memory (GiB) on the compute device and on the
    host, and the estimated seconds per phase (`seconds` is their sum)."""

    cell: Cell
    profile: str
    source: str = ""
    bits: float | None = None
    bits_paper: float | None = None
    model_bits: float | None = None
    device_gib: float | None = None
    host_gib: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    method_cost_known: bool = True
    error: str | None = None

    @property
    def seconds(self) -> float:
        return sum(self.phases.values())


def _model_ref(cell: Cell, base_dir: Path | None) -> str:
    """The string `resolve_config` understands for the cell's model (local paths resolved)."""
    for base in (Path.cwd(), base_dir):
        if base is not None and (Path(base) / cell.model.id).expanduser().exists():
            return str((Path(base) / cell.model.id).expanduser().resolve())
    return cell.model.id


def _profile(cell: Cell, profile: str | None) -> str:
    if profile:
        return profile
    if cell.device != "auto":
        return cell.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _eval_tokens(dataset: str, seqlen: int, max_windows: int | None) -> int:
    if dataset == "c4":
        windows = min(256, max_windows or 256)
    else:
        path = Path(dataset)
        tokens = EVAL_TOKENS.get(dataset) or (path.stat().st_size // 8 if path.is_file() else 100_000)
        windows = max(1, tokens // seqlen)  # local files: their evaluation half, ~4 characters a token
        windows = min(windows, max_windows or windows)
    return windows * seqlen


def _zero_shot_tokens(cell: Cell) -> int:
    """Tokens lm-eval scores for the cell's zero-shot tasks (`limit`: examples, or a fraction < 1)."""
    spec = getattr(cell.evaluations, "zero_shot", None)
    total = 0
    for task in (getattr(spec, "tasks", None) or ()) if spec is not None else ():
        examples, choices, tokens = ZERO_SHOT_REQUESTS.get(task, (2000, 2, 100))
        limit = getattr(spec, "limit", None)
        if limit:
            examples = min(examples, int(limit if limit >= 1 else examples * limit))
        total += examples * choices * tokens
    return total


@dataclass
class _Budget:
    """Running totals of one cell's estimate: seconds per phase, peak bytes per memory."""

    phases: dict[str, float] = field(default_factory=dict)
    device: float = 0.0
    host: float = 0.0


def _quantization(cell: Cell, facts: ModelFacts, quantizer: Any, dev: DeviceProfile, budget: _Budget,
                  weights_bytes: float, dtype_bytes: int, seqlen_default: int) -> None:
    """Calibration passes, H products, block fine-tuning and the method's own optimisation."""
    calib = cell.calibration
    if calib is not None and quantizer.modifies_weights:
        seqlen = calib.seqlen or seqlen_default
        tokens = calib.num_sequences * seqlen
        rate = (dev.half_tflops if _BYTES[calib.dtype] == 2 or dtype_bytes == 2 else dev.fp32_tflops) * 1e12
        passes = 2 * tokens * facts.forward_flops(seqlen, head=False)  # accumulate H + propagate, per block
        h_products = sum(2 * i * i for i in facts.group_inputs) * tokens
        budget.phases["calibration passes"] = passes / rate + h_products / (dev.fp32_tflops * 1e12)
        finetunes = quantizer.finetunes_blocks()
        seq_passes = quantizer.finetune_sequence_passes(calib.num_sequences) if finetunes else 0.0
        if seq_passes:  # forward + backward ~ 3 forwards
            budget.phases["block fine-tuning"] = 3 * seq_passes * seqlen * facts.forward_flops(seqlen, head=False) / rate
        budget.host += calib.num_sequences * seqlen * facts.hidden * dtype_bytes * (2 if finetunes else 1)
        batch = min(PIPELINE_BATCH, calib.num_sequences) * seqlen
        block_acts = batch * (6 * facts.hidden + 3 * facts.intermediate) * 4 * (4 if finetunes else 1)
        block_h = sum(i * i * 8 for i in set(facts.group_inputs)) * 3
        largest = max(o * i for o, i in facts.linear_shapes)
        method_state = 6 * largest * 4 + 2 * max(i for _, i in facts.linear_shapes) ** 2 * 8
        budget.device = max(budget.device, weights_bytes + block_acts + block_h + method_state)
    if quantizer.modifies_weights:
        flops = [quantizer.flops_for_shape(o, i) for o, i in facts.linear_shapes]
        budget.phases["method optimisation"] = sum(f or 0.0 for f in flops) / (dev.method_tflops * 1e12)
        if any(f is None for f in flops):
            budget.phases["method optimisation"] = math.nan


def _finetune_e2e(cell: Cell, facts: ModelFacts, budget: _Budget, rate: float, weights_bytes: float,
                  quantized_bytes: float, dtype_bytes: int, seqlen_default: int) -> None:
    """Teacher forward + student forward and backward (+ a recomputed forward with checkpointing)."""
    e2e, calib = cell.finetune_e2e, cell.calibration
    if e2e is None or calib is None:
        return
    seqlen = calib.seqlen or seqlen_default
    n = min(calib.num_sequences, e2e.max_sequences or calib.num_sequences)
    passes = 5 if e2e.gradient_checkpointing else 4
    budget.phases["end-to-end fine-tuning"] = e2e.epochs * n * seqlen * facts.forward_flops(seqlen, head=True) * passes / rate
    logits = 4 * e2e.microbatch_size * seqlen * facts.vocab * 4
    acts = facts.blocks * e2e.microbatch_size * seqlen * facts.hidden * dtype_bytes * (2 if e2e.gradient_checkpointing else 12)
    budget.device = max(budget.device, quantized_bytes + weights_bytes + logits + acts)


def _evaluations(cell: Cell, facts: ModelFacts, dev: DeviceProfile, budget: _Budget, rate: float,
                 weights_bytes: float, quantized_bytes: float, seqlen_default: int) -> None:
    """Perplexity, zero-shot and decode throughput."""
    ppl = cell.evaluations.perplexity
    if ppl is not None:
        seqlen = ppl.seqlen or seqlen_default
        if getattr(ppl, "text_bytes", None):  # the identical-text setting: ~4 UTF-8 bytes a token
            tokens = len(ppl.datasets) * ppl.text_bytes // 4
        else:
            tokens = sum(_eval_tokens(d, seqlen, ppl.max_windows) for d in ppl.datasets)
        budget.phases["perplexity"] = tokens * facts.forward_flops(seqlen, head=True) / rate
        budget.device = max(budget.device, quantized_bytes + 2 * ppl.batch_size * seqlen * facts.vocab * 4)
    zs_tokens = _zero_shot_tokens(cell)
    if zs_tokens:
        budget.phases["zero-shot"] = zs_tokens * facts.forward_flops(256, head=True) / rate
    thr = getattr(cell.evaluations, "throughput", None)
    if thr is not None:
        # every batch size: warm-up and timed runs of `new_tokens` decode steps, each step streaming
        # the weights once, for the quantized model and (if asked) the unquantized reference
        runs = getattr(thr, "warmup", 2) + getattr(thr, "repeats", 5)
        steps = runs * len(getattr(thr, "batch_sizes", None) or [1]) * getattr(thr, "new_tokens", 128)
        streamed = quantized_bytes + (weights_bytes if getattr(thr, "reference", True) else 0)
        budget.phases["throughput"] = steps * streamed / (dev.memory_gbps * 1e9)


def plan_cell(cell: Cell, *, base_dir: Path | None = None, profile: str | None = None) -> CellPlan:
    """Bits, memory and time of one cell from configs alone (see the module docstring)."""
    from harness.metrics.bits_table import bits_table
    from harness.registry import build_quantizer

    plan = CellPlan(cell=cell, profile=_profile(cell, profile))
    dev = PROFILES[plan.profile]
    try:
        ref = _model_ref(cell, base_dir)
        facts = model_facts(ref)
        table = bits_table(ref, cell.method, params=cell.params)
    except HarnessError as exc:
        plan.error = str(exc)
        return plan
    plan.source, plan.bits, plan.bits_paper, plan.model_bits = facts.source, table.bits, table.bits_paper, table.model_bits
    quantizer = build_quantizer(cell.method, params=cell.params)
    dtype_bytes = _BYTES[cell.dtype]
    rate = (dev.half_tflops if dtype_bytes == 2 else dev.fp32_tflops) * 1e12
    seqlen = cell.model.seqlen or facts.default_seqlen
    weights = facts.total_weights * dtype_bytes
    quantized = weights - facts.linear_weights * dtype_bytes + facts.linear_weights * table.bits / 8
    # the model is read into host memory, then moved to the device
    budget = _Budget(phases={"load": weights / 1e9}, device=weights, host=weights)
    _quantization(cell, facts, quantizer, dev, budget, weights, dtype_bytes, seqlen)
    _finetune_e2e(cell, facts, budget, rate, weights, quantized, dtype_bytes, seqlen)
    _evaluations(cell, facts, dev, budget, rate, weights, quantized, seqlen)
    plan.method_cost_known = not math.isnan(budget.phases.get("method optimisation", 0.0))
    plan.phases = {k: v for k, v in budget.phases.items() if v > 0}  # NaN (unknown) drops out too
    if plan.profile == "cpu":  # one memory: the host's
        plan.host_gib, plan.device_gib = (budget.host + budget.device - weights) / GiB, None
    else:
        plan.host_gib, plan.device_gib = budget.host / GiB, budget.device / GiB
    return plan


def plan_cells(cells: list[Cell], *, base_dir: Path | None = None, profile: str | None = None) -> list[CellPlan]:
    """`plan_cell` for every cell (models' shapes are built once each)."""
    if profile is not None and profile not in PROFILES:
        raise HarnessError(f"--device-profile {profile!r}: use one of {', '.join(PROFILES)}.")
    return [plan_cell(c, base_dir=base_dir, profile=profile) for c in cells]


def format_seconds(seconds: float) -> str:
    """'45 s', '12 min', '3.4 h', '2.1 d'."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def describe(cell: Cell) -> dict[str, Any]:
    """Short facts of a cell for the plan table: calibration and evaluations."""
    calib = cell.calibration
    out = {"calibration": f"{calib.source} {calib.num_sequences}×{calib.seqlen or 'default'}" if calib else "—"}
    ppl = cell.evaluations.perplexity
    evals = [f"ppl {'/'.join(ppl.datasets)}"] if ppl else []
    zs = getattr(cell.evaluations, "zero_shot", None)
    if zs is not None:
        evals.append(f"{len(getattr(zs, 'tasks', []) or [])} zero-shot tasks")
    if getattr(cell.evaluations, "throughput", None) is not None:
        evals.append("throughput")
    if getattr(cell, "finetune_e2e", None) is not None:
        evals.insert(0, "e2e fine-tuning")
    out["evaluations"] = ", ".join(evals) or "—"
    return out
