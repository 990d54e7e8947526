"""Reference files: published numbers, each with its source, shown next to our results.

A reference file is YAML::

    name: Published Llama-2 results
    sources:
      aqlm-readme: {title: "...", url: "https://...", note: "..."}   # also `version` (optional)
    entries:
      - model: meta-llama/Llama-2-7b-hf      # matched with a record's model id or label
        method: aqlm                          # the registry name of the method
        match: {num_codebooks: 2}             # params a record must have to be compared (optional)
        label: AQLM 2x8                       # the row label of the published numbers
        bits: 2.0                             # optional
        metrics: {wikitext2: 6.69, winogrande: 0.65}   # perplexity per dataset, accuracy per task (0-1)
        source: aqlm-readme                   # a key of `sources`

Unknown keys, an entry without a known source, and non-numeric metrics are errors that name the
file and the field.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, ValidationError, model_validator

from harness.errors import HarnessError
from harness.strict import Source, StrictModel, validation_message

if TYPE_CHECKING:
    from harness.record import CellRecord

__all__ = ["Reference", "ReferenceEntry", "Source", "load_reference"]


class ReferenceEntry(StrictModel):
    """Published numbers of one method configuration on one model."""

    model: str
    method: str
    label: str
    source: str
    match: dict[str, Any] = Field(default_factory=dict)
    bits: float | None = None
    metrics: dict[str, float] = Field(min_length=1)

    def matches_model(self, model_id: str | None, model_label: str | None) -> bool:
        """True when the entry's model is the record's id or label (or the id's last path part)."""
        names = {n for n in (model_id, model_label) if n}
        names |= {n.rstrip("/").split("/")[-1] for n in list(names)}
        return self.model in names or self.model.rstrip("/").split("/")[-1] in names

    def matches_record(self, record: CellRecord) -> bool:
        """Same model, same method, and every `match` param equal to the record's."""
        model = record.model or {}
        if record.method != self.method or not self.matches_model(model.get("id"), model.get("label")):
            return False
        params = record.params or {}
        return all(key in params and params[key] == value for key, value in self.match.items())


class Reference(StrictModel):
    """A reference file: named sources and the entries citing them."""

    name: str
    sources: dict[str, Source] = Field(min_length=1)
    entries: list[ReferenceEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _sources_exist(self) -> "Reference":
        for i, entry in enumerate(self.entries):
            if entry.source not in self.sources:
                raise ValueError(
                    f"entries[{i}].source '{entry.source}' is not one of the `sources` keys "
                    f"({', '.join(self.sources)})"
                )
        return self


def load_reference(path: str | os.PathLike) -> Reference:
    """Read and validate a reference file; HarnessError naming the file and the field otherwise."""
    p = Path(path)
    if not p.is_file():
        raise HarnessError(f"{p}: reference file not found. Give a YAML file of published numbers, "
                           f"e.g. suites/paper/reference_llama2.yaml.")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise HarnessError(f"{p}: not valid YAML ({str(exc).splitlines()[0]}).") from exc
    try:
        return Reference.model_validate(raw)
    except ValidationError as exc:  # the one-paragraph message of suites and claims files

        raise HarnessError(validation_message(
            str(p), exc, "reference file", "See harness/report/reference.py for the format.")) from exc
