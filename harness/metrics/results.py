"""The result types of the perplexity and zero-shot evaluations (torch-free: the cell record,
`harness.record`, builds its typed parts from them)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PerplexityResult", "TaskResult", "ZeroShotResult"]


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    seqlen: int
    windows: int
    tokens: int  # predicted tokens
    window_nll: list[float] = field(default_factory=list)
    nll_sum: float | None = None  # total NLL of the predicted tokens (nats)
    bytes: int | None = None  # UTF-8 bytes of the text the predicted tokens cover
    bpb: float | None = None  # nll_sum / ln 2 / bytes (bits per byte)
    window_bytes: list[int] | None = None  # per window, the bytes its predicted tokens cover

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TaskResult:
    """One task's result: accuracies in [0, 1] (None where the task has no such metric)."""

    task: str
    acc: float | None = None
    acc_stderr: float | None = None
    acc_norm: float | None = None
    acc_norm_stderr: float | None = None
    samples: int | None = None
    version: Any = None
    fingerprint: str | None = None  # pack tasks: hash of the task's YAML and data file
    seconds: float = 0.0
    batch_size: int | None = None
    limit: int | float | None = None
    cached: bool = False
    error: dict[str, str] | None = None

    @property
    def finished(self) -> bool:
        """Evaluated without error and with an accuracy."""
        return self.error is None and self.acc is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ZeroShotResult:
    """All tasks of one evaluation, their averages and the settings they were measured under."""

    tasks: dict[str, TaskResult]
    limit: int | float | None
    batch_size: int
    num_fewshot: int = 0
    lm_eval_version: str = ""
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def average(self) -> dict[str, Any]:
        """Mean `acc` over the tasks that finished, mean `acc_norm` over those that have it."""
        done = [r for r in self.tasks.values() if r.finished]
        normed = [r.acc_norm for r in done if r.acc_norm is not None]
        return {
            "acc": sum(r.acc for r in done) / len(done) if done else None,
            "acc_norm": sum(normed) / len(normed) if normed else None,
            "tasks": [r.task for r in done],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": {name: r.to_dict() for name, r in self.tasks.items()},
            "average": self.average,
            "num_fewshot": self.num_fewshot,
            "limit": self.limit,
            "batch_size": self.batch_size,
            "lm_eval_version": self.lm_eval_version,
            "seconds": round(self.seconds, 3),
            "errors": self.errors,
        }
