"""The suite schema: typed, frozen pydantic models of a suite file and of a resolved cell.

Unknown keys are errors (`extra="forbid"`); validation here is pure (no I/O). Loading a file,
checking what it references and resolving it into cells is `harness.suite`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.evaluations.config import EvaluationConfig
from harness.identity import IdentityScope, cell_identity
from harness.model_spec import ModelSpec
from harness.strict import StrictModel
from harness.suite.report_spec import ReportSpec
from harness.tasks import PAPER_TASKS

EMBEDDED_MODEL_ALIAS = "smollm2-135m"
#: The embedded models a suite may name (the catalog `harness.models.embedded.EMBEDDED_MODELS`).
EMBEDDED_MODEL_NAMES = ("smollm2-135m", "gemma3-270m")
KNOWN_DATASETS = ("wikitext2", "c4", "ptb", "redpajama", "embedded")
#: A Hugging Face hub id as a suite must write it: `org/name`.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _check_seeds(v: list[int] | None) -> list[int] | None:
    """`seeds`: a non-empty list of distinct integers >= 0 (None: not set)."""
    if v is None:
        return v
    if not v:
        raise ValueError("`seeds` is empty: list at least one seed, e.g. [0, 1, 2], or remove the key")
    bad = [s for s in v if s < 0]
    if bad:
        raise ValueError(f"seeds must be integers >= 0, got {bad}")
    if len(set(v)) != len(v):
        raise ValueError(f"a seed is listed twice in {v}: list each seed once")
    return v


class CalibrationSpec(StrictModel):
    source: str = "embedded"
    num_sequences: int = Field(128, gt=0)
    seqlen: int | None = Field(None, gt=0)
    seed: int | None = Field(
        None, description="seed of the calibration sample; default: the cell's seed, so repeats (`seeds`) draw "
        "different samples. Set it to keep the sample fixed: then only the method's randomness varies over seeds",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the calibration forward passes (autocast); H is always float64"
    )


class PerplexitySpec(EvaluationConfig):
    datasets: list[str] = Field(default_factory=lambda: ["embedded"], min_length=1)
    seqlen: int | None = Field(None, gt=0)
    max_windows: int | None = Field(None, gt=0)
    batch_size: int = Field(1, gt=0)
    text_bytes: int | None = Field(
        None, gt=0, description="identical-text setting: evaluate the first text_bytes UTF-8 bytes of the held-out "
        "text, the same text for every model and tokenizer, so bpb compares model families (excludes max_windows)",
    )

    @model_validator(mode="after")
    def _text_or_windows(self) -> PerplexitySpec:
        if self.text_bytes is not None and self.max_windows is not None:
            raise ValueError(
                "perplexity: `text_bytes` and `max_windows` exclude each other (with text_bytes the text sets the "
                "windows); remove one"
            )
        return self


class ThroughputSpec(EvaluationConfig):
    """Decode throughput (`harness.metrics.throughput`): greedy decoding with a static KV cache,
    the unquantized model measured in the same run as the reference (repeats interleaved)."""

    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1, description="batch sizes to measure")
    prompt_len: int = Field(1, gt=0, description="prompt tokens prefilled before decoding")
    new_tokens: int = Field(128, gt=0, description="decode steps (new tokens) per timed run")
    warmup: int = Field(2, ge=0, description="untimed runs first")
    repeats: int = Field(5, gt=0, description="timed runs; the median is reported")
    reference: bool = Field(True, description="also measure the unquantized model in the same run")
    cuda_graphs: bool = Field(True, description="on CUDA, capture the decode step in a CUDA graph when possible")

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError(f"batch sizes must be positive integers, got {v}")
        return v


class ZeroShotSpec(EvaluationConfig):
    """Zero-shot accuracy through lm-eval (`harness.metrics.zeroshot`), always 0-shot.

    The default task list is the protocol's (winogrande, piqa, hellaswag, arc_easy,
    arc_challenge, boolq: they need the hub or a filled datasets cache); offline suites name
    the shipped task pack (`embedded_lastword`, `embedded_cloze4`)."""

    tasks: list[str] = Field(
        default_factory=lambda: list(PAPER_TASKS), min_length=1, description="lm-eval task names, or the offline pack's"
    )
    batch_size: int = Field(8, gt=0, description="lm-eval batch size")
    limit: Union[int, float, None] = Field(
        None, gt=0, description="examples per task (an integer), or a fraction of them (< 1); None = all"
    )
    num_fewshot: Literal[0] = Field(0, description="fixed by the protocol")

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if not isinstance(t, str) or not re.fullmatch(r"[\w.\-]+", t)]
        if bad:
            raise ValueError(f"invalid task name(s) {bad}: use lm-eval task names such as piqa, arc_easy")
        if len(set(v)) != len(v):
            raise ValueError(f"task listed twice in {v}")
        return v

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: int | float | None) -> int | float | None:
        if isinstance(v, bool) or (isinstance(v, float) and v >= 1 and not v.is_integer()):
            raise ValueError("must be a whole number of examples, or a fraction below 1")
        return int(v) if isinstance(v, float) and v >= 1 else v


class EvaluationsSpec(BaseModel):
    """The evaluations of every cell: the built-in blocks below, plus one block per registered
    evaluation plugin (`harness.evaluations`), under its name, e.g. `mean_logit: {windows: 4}`.

    A plugin block is kept here as a plain mapping (validation stays pure); `harness.suite`
    checks the name and validates the block with the plugin's `Config`. A block set to null is
    dropped, so it adds nothing to the cell (or its key)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    perplexity: PerplexitySpec | None = Field(default_factory=PerplexitySpec)
    throughput: ThroughputSpec | None = None
    zero_shot: ZeroShotSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _plugin_blocks(cls, data: Any) -> Any:
        """Plugin blocks are mappings under a plain name; null ones are dropped."""
        if not isinstance(data, dict):
            return data
        out = {}
        for name, block in data.items():
            if name in cls.model_fields:
                out[name] = block
                continue
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w\-]*", name):
                raise ValueError(f"evaluation name {name!r}: use a registered evaluation name such as perplexity")
            if block is None:
                continue
            if not isinstance(block, dict):
                raise ValueError(
                    f"`{name}` must be a mapping of the evaluation's settings (`{name}: {{}}` for its defaults), "
                    f"not {type(block).__name__}"
                )
            out[name] = block
        return out

    @property
    def plugins(self) -> dict[str, dict[str, Any]]:
        """The plugin blocks by evaluation name, in suite order (the built-in fields excluded)."""
        return dict(self.model_extra or {})


class FinetuneE2ESpec(StrictModel):
    """End-to-end fine-tuning after quantization (`harness.finetune_e2e`): distil the unquantized
    model's logits into the quantized model on the calibration sequences (KL per token), training
    the layers' continuous tensors (codebooks, scales) and the norms. The same spec on two method
    lines tunes them identically."""

    epochs: int = Field(1, ge=1, description="passes over the training sequences")
    lr: float = Field(1e-5, gt=0, description="Adam learning rate")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas")
    batch_size: int = Field(16, ge=1, description="sequences per Adam step (gradients of microbatches accumulated)")
    microbatch_size: int = Field(1, ge=1, description="sequences per forward/backward pass")
    max_sequences: int | None = Field(None, ge=2, description="use the first this many calibration sequences (train + validation); None = all")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="the last fraction of the sequences, held out for early stopping")
    patience: int = Field(2, ge=1, description="epochs without a lower validation KL before stopping")
    keep_best: bool = Field(True, description="restore the tensors of the best validation epoch")
    gradient_checkpointing: bool = Field(True, description="recompute each block's activations in the backward pass")


class MethodEntry(StrictModel):
    """One method line of a suite: a name, explicit params and/or nominal bit budgets, and an
    optional end-to-end fine-tuning stage after quantization."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    budgets: list[int] | None = None
    seeds: list[int] | None = Field(None, description="repeat each cell of this line once per seed (overrides the suite's `seeds`)")
    finetune_e2e: FinetuneE2ESpec | None = None

    @field_validator("seeds")
    @classmethod
    def _valid_seeds(cls, v: list[int] | None) -> list[int] | None:
        return _check_seeds(v)

    @field_validator("budgets")
    @classmethod
    def _non_empty(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and not v:
            raise ValueError("`budgets` is empty: list at least one bit budget, or remove the key")
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"a budget is listed twice in {v}: list each budget once")
        return v


ExecutorType = Literal["local", "ray", "slurm"]

#: Which executor types each optional executor field applies to.
_EXECUTOR_FIELDS = {
    "max_parallel": ("ray", "slurm"),
    "num_cpus": ("ray", "slurm"),
    "num_gpus": ("ray", "slurm"),
    "memory_gb": ("ray", "slurm"),
    "address": ("ray",),
    "partition": ("slurm",),
    "time_min": ("slurm",),
    "slurm_folder": ("slurm",),
    "slurm_parameters": ("slurm",),
    "local": ("slurm",),
}


class ExecutorSpec(StrictModel):
    """Where cells run: `local` (subprocesses here), `ray` (one Ray task per cell) or `slurm`
    (one Slurm job per cell, through submitit)."""

    type: ExecutorType = "local"
    timeout_s: float | None = Field(None, gt=0, description="kill a cell after this many seconds")
    max_retries: int = Field(1, ge=0, description="re-runs of a cell whose worker died without a record")
    max_parallel: int | None = Field(None, gt=0, description="ray/slurm: at most this many cells in flight")
    num_cpus: float | None = Field(None, gt=0, description="ray/slurm: CPUs per cell (ray default 1)")
    num_gpus: float | None = Field(None, ge=0, description="ray/slurm: GPUs per cell (default 1 for device cuda)")
    memory_gb: float | None = Field(None, gt=0, description="ray/slurm: memory per cell in GiB")
    address: str | None = Field(
        None, description="ray: cluster address ('auto', host:port, ray://...); default: start a local instance"
    )
    partition: str | None = Field(None, description="slurm: partition")
    time_min: int | None = Field(None, gt=0, description="slurm: job time limit in minutes (default 1440)")
    slurm_folder: str | None = Field(None, description="slurm: submitit folder (default <results>/slurm)")
    slurm_parameters: dict[str, Union[str, int]] = Field(
        default_factory=dict, description="slurm: extra #SBATCH options, e.g. {account: x, qos: y}"
    )
    local: bool = Field(False, description="slurm: run the jobs as local processes (submitit's local executor)")

    @model_validator(mode="after")
    def _fields_match_type(self) -> "ExecutorSpec":
        for name in sorted(self.model_fields_set & set(_EXECUTOR_FIELDS)):
            if self.type not in _EXECUTOR_FIELDS[name]:
                allowed = " or ".join(f"`type: {t}`" for t in _EXECUTOR_FIELDS[name])
                raise ValueError(f"`executor.{name}` applies to {allowed} only, not `type: {self.type}`; remove it")
        if self.type == "slurm":
            for name in ("num_cpus", "num_gpus"):
                value = getattr(self, name)
                if value is not None and value != int(value):
                    raise ValueError(f"`executor.{name}` must be a whole number for Slurm, got {value}")
        return self


class Suite(StrictModel):
    name: str
    description: str = ""
    seed: int = 0
    seeds: list[int] | None = Field(
        None, description="repeats: every quantized cell runs once per seed (default: once, with `seed`)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    output_dir: str | None = None
    save_models: bool = True
    models: list[Union[str, ModelSpec]] = Field(min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    evaluations: EvaluationsSpec = Field(default_factory=EvaluationsSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    stand_in: dict[str, Any] | None = Field(
        None, description="set by `harness run --stand-in`: what was substituted (copied into every record)"
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        """`name` is the results folder under results/: one plain path component."""
        problem = None
        if not v.strip():
            problem = "is empty"
        elif "/" in v or "\\" in v:
            problem = "contains a path separator"
        elif v.startswith((".", "~")):
            problem = "starts with '.' or '~'"
        elif Path(v).is_absolute() or re.match(r"^[A-Za-z]:", v):
            problem = "is an absolute path"
        elif any(ord(c) < 32 for c in v):
            problem = "contains a control character"
        if problem:
            raise ValueError(
                f"suite name {v!r} {problem}; the name becomes the folder results/<name>, so it must be a single "
                f"plain folder name such as 'sub2bit-llama' (letters, digits, '-', '_'). To write elsewhere, "
                f"keep a plain name and set `output_dir`"
            )
        return v

    @field_validator("executor", mode="before")
    @classmethod
    def _executor_shorthand(cls, value: Any) -> Any:
        """`executor: ray` is short for `executor: {type: ray}`."""
        if isinstance(value, str):
            if value not in get_args(ExecutorType):
                raise ValueError(f"unknown executor '{value}': use local, ray or slurm")
            return {"type": value}
        return value

    @field_validator("seeds")
    @classmethod
    def _valid_seeds(cls, v: list[int] | None) -> list[int] | None:
        return _check_seeds(v)

    @model_validator(mode="after")
    def _normalise(self) -> "Suite":
        models = [ModelSpec(id=m) if isinstance(m, str) else m for m in self.models]
        object.__setattr__(self, "models", models)
        return self


class Cell(StrictModel):
    """One unit of work: one model, one fully resolved method config, its evaluations."""

    suite: str
    model: ModelSpec
    method: str
    method_label: str
    budget: int | None
    params: dict[str, Any]
    calibration: CalibrationSpec | None
    evaluations: EvaluationsSpec
    seed: int
    device: str
    dtype: str
    save_model: bool
    finetune_e2e: FinetuneE2ESpec | None = None
    stand_in: dict[str, Any] | None = None
    base_seed: int | None = Field(None, description="the suite's `seed` when this cell is a repeat with another seed (labels only)")

    @property
    def key(self) -> str:
        """The cell's result identity (:func:`harness.identity.cell_identity`, scope ``RESULT``):
        a hash of everything that determines its results."""
        return cell_identity(self.model_dump(mode="json"), IdentityScope.RESULT)

    @property
    def label(self) -> str:
        budget = f"/b{self.budget}" if self.budget is not None else ""
        seed = f"/s{self.seed}" if self.base_seed is not None and self.seed != self.base_seed else ""
        return f"{self.model.label}/{self.method_label}{budget}{seed}"
