"""The evaluation contract: `Evaluation` (a name, a typed `Config`, `run(context)`) and the
`EvaluationContext` the runner hands it (see the package docstring)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from harness.evaluations.config import EvaluationConfig, NoSettings

if TYPE_CHECKING:
    from harness.models.adapters import FamilyAdapter
    from harness.store import ResultStore
    from harness.suite import Cell


class NonFiniteError(RuntimeError):
    """A quantized layer or an evaluation loss is NaN or infinite (the cell fails with kind `nonfinite`)."""


@dataclass(frozen=True)
class EvaluationContext:
    """Everything an evaluation may use, for one cell (built by the runner after quantization).

    model: the cell's quantized model (eval mode) on `device`, in `dtype`; the one that was
        measured for bits and saved. An evaluation must leave it as it found it.
    tokenizer, adapter: the model's tokenizer and family adapter (`harness.models.adapters`).
    quantized: False when the cell's method leaves the weights alone (the unquantized reference).
    default_seqlen: the model's protocol sequence length (the suite's `seqlen` or the adapter's).
    metrics: what the cell has measured so far (bits, size, earlier evaluations), read-only.
    base_dir: where relative data paths of the suite are read.
    """

    cell: Cell
    model: nn.Module
    tokenizer: Any
    adapter: FamilyAdapter
    store: ResultStore
    device: torch.device
    dtype: torch.dtype
    quantized: bool
    default_seqlen: int
    metrics: Mapping[str, Any]
    progress: bool = True
    base_dir: Path | None = None

    @property
    def label(self) -> str:
        """The cell's label (e.g. `smollm2-135m/rtn/b4`), for log lines."""
        return self.cell.label

    def load_unquantized(self) -> nn.Module:
        """The cell's model loaded again, unquantized, on the same device and dtype."""
        from harness.models import load_model

        return load_model(
            self.cell.model, dtype=self.dtype, device=self.device, progress=self.progress, base_dir=self.base_dir
        ).model


class Evaluation:
    """An evaluation: registered under `name`, configured by its suite block (`Config`).

    Subclasses set `name` (the name they are registered under: the registry checks it) and
    `Config` (a subclass of `EvaluationConfig`; `NoSettings` when there is nothing to set) and
    implement `run`. `automatic` evaluations run for every quantized cell without a block in
    the suite (and may not be named there), built-in or registered by a plugin.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[EvaluationConfig]] = NoSettings
    automatic: ClassVar[bool] = False

    def __init__(self, config: EvaluationConfig):
        self.config = config

    def run(self, context: EvaluationContext) -> Any:
        """Measure `context.model`; the JSON-serialisable result becomes the record's
        `metrics[<name>]`. Raising fails the cell (its record says why); an evaluation whose
        failure should leave the cell ok returns its error inside its result instead."""
        raise NotImplementedError
