"""`ModelSpec`: a suite's model entry. It lives below both `harness.suite` (which validates and
resolves suites) and `harness.models` (which loads the model it names), so neither imports the other
for it."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from harness.strict import StrictModel


class ModelSpec(StrictModel):
    """A model: the embedded alias, a hub id, a local directory or a GGUF file."""

    id: str
    name: str | None = Field(None, description="short name used in tables (default: derived from id)")
    revision: str | None = None
    seqlen: int | None = Field(None, gt=0, description="default evaluation/calibration length")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return Path(self.id).stem if self.id.endswith(".gguf") else self.id.rstrip("/").split("/")[-1]
