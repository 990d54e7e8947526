"""The claims file: published claims written once as data, each with a checkable form.

A claims file is YAML (see ``suites/claims/crvq.yaml``)::

    name: crvq-paper
    sources:
      crvq: {title: "Xu et al., CRVQ: Channel-Relaxed Vector Quantization ...", version: "TACL 2025", url: "https://..."}
    claims:
      - id: crvq-vs-aqlm-ppl             # unique, lower-case words joined by '-'
        source: crvq                      # a key of `sources`
        table: "Table 2"                  # where in the source (optional)
        statement: "CRVQ has 38.9% lower perplexity than AQLM on LLaMA-2-7B at ~1 bit"
        check:
          base: aqlm                      # a registered method name, or {method, label, params}
          against: crvq
          model: meta-llama/Llama-2-7b-hf # hub id, shape preset (llama2-7b) or a glob over them
          budget: 1                       # nominal bit budget (optional: every budget)
          metric: ppl:wikitext2           # ppl:<dataset> | bpb:<dataset> | acc:avg | acc:<task> |
                                          # bits | bits_paper | model_bits | tok/s[:b<batch>]
          change: {percent: -38.9}        # or {absolute: x}; a number or a range [low, high]
          tolerance: 5                    # in the unit of the change: what still counts as agreeing
          at: budget                      # or matched_bits: base interpolated on its frontier
          vary: [critical_ratio]          # matched_bits: frontier of lines differing in these params alone
      - id: aqlm-2x8-value
        ...
        check: {method: {method: aqlm, params: {num_codebooks: 2}}, model: llama2-7b, metric: ppl:wikitext2,
                value: 6.69, tolerance: 0.1}

Validation is pure (no I/O besides reading the file); unknown keys are errors. Names that must
exist (methods, their params, metrics, datasets, tasks, model patterns) are checked by
:func:`load_claims`, which raises :class:`ClaimsError` (a ``HarnessError``: exit 2 in the CLI)
naming the file, the field and the fix.
"""
from __future__ import annotations

import fnmatch
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from harness.errors import HarnessError
from harness.strict import Source, StrictModel, validation_message

__all__ = [
    "Change", "Check", "Claim", "ClaimsError", "ClaimsFile", "Metric", "SideSpec", "Source", "load_claims",
    "known_model_names", "parse_metric",
]

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_METRIC = re.compile(r"^(?:(?P<kind>ppl|bpb|acc):(?P<what>[\w.\-]+)|(?P<plain>bits|bits_paper|model_bits)|"
                     r"tok/s(?::b(?P<batch>\d+))?)$")
METRIC_FORMS = "ppl:<dataset>, bpb:<dataset>, acc:avg, acc:<task>, bits, bits_paper, model_bits, tok/s[:b<batch>]"


class ClaimsError(HarnessError):
    """A claims file is malformed or names something that does not exist."""


class SideSpec(StrictModel):
    """Which cells one side of a claim selects: a registered method, optionally one line of it
    (its `label`, a glob) and params the cells must have."""

    method: str
    label: str | None = Field(None, description="method label (glob) of the line(s); default: the line labelled like the method")
    params: dict[str, Any] = Field(default_factory=dict, description="params a cell must have, e.g. {num_codebooks: 2}")

    def describe(self) -> str:
        """``crvq``, ``crvq-r0.02-e3``, ``crvq (every line)``, ``aqlm (num_codebooks=2)``."""
        if self.label is None or self.label == self.method:
            text = self.method
        elif self.label == "*":
            text = f"{self.method} (every line)"
        else:
            text = self.label if not any(c in self.label for c in "*?[") else f"{self.method} ({self.label})"
        if self.params:
            text += " (" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"
        return text


#: A claimed number or range [low, high]; a number x is read as [x, x].
Range = tuple[float, float]


def _as_range(value: Any) -> Any:
    """``x`` → ``(x, x)``; a list passes on to the tuple check; anything else is an error."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value, value)
    if value is None or isinstance(value, (list, tuple)):
        return value
    raise ValueError(f"{value!r} is not a number: give a number, or a range [low, high] (-.inf/.inf for one side)")


def _check_order(claimed: tuple[float, float]) -> None:
    low, high = claimed
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"the claimed range [{low}, {high}] must be [low, high] with low <= high")


class Change(StrictModel):
    """A claimed change of `against` relative to `base`: in percent of the base's value, or in
    the metric's unit; one number, or a range [low, high] (-.inf / .inf for one-sided claims)."""

    percent: Range | None = None
    absolute: Range | None = None

    @field_validator("percent", "absolute", mode="before")
    @classmethod
    def _number_is_a_range(cls, v: Any) -> Any:
        return _as_range(v)

    @model_validator(mode="after")
    def _one(self) -> "Change":
        given = [k for k in ("percent", "absolute") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `percent` or `absolute`, e.g. {percent: -38.9}")
        _check_order(self.range)
        return self

    @property
    def unit(self) -> Literal["percent", "absolute"]:
        return "percent" if self.percent is not None else "absolute"

    @property
    def range(self) -> tuple[float, float]:
        return self.percent if self.percent is not None else self.absolute  # type: ignore[return-value]


class Check(StrictModel):
    """The checkable form of a claim: a paired comparison (`base`, `against`, `change`) or a
    claimed value of one method (`method`, `value`), on a model (pattern), budget and metric."""

    metric: str = Field(description=METRIC_FORMS)
    model: str = Field(description="the claimed model: hub id, shape preset (llama2-7b) or a glob over them")
    budget: int | None = Field(None, description="nominal bit budget of the cells (default: every budget)")
    base: SideSpec | None = Field(None, description="a method name, or {method, label, params}")
    against: SideSpec | None = None
    method: SideSpec | None = Field(None, description="the method of a `value` claim")
    change: Change | None = None
    value: Range | None = None
    tolerance: float = Field(0.0, ge=0, description="what still counts as agreeing, in the unit of the claim")
    at: Literal["budget", "matched_bits"] = Field(
        "budget", description="matched_bits: the base's frontier interpolated at the against side's bits"
    )
    bits: Literal["bits", "bits_paper"] = Field("bits", description="the bits measure used to match bits")
    vary: list[str] | None = Field(
        None, description="matched_bits only: the base's frontier takes only lines that differ from the against "
                          "line in these params alone (every other param, the variant, end-to-end fine-tuning and "
                          "calibration equal), e.g. [critical_ratio, num_extended_codebooks]; default: every line "
                          "the base selects")
    level: float = Field(0.95, gt=0, lt=1, description="confidence level of the intervals")

    @field_validator("base", "against", "method", mode="before")
    @classmethod
    def _side(cls, v: Any) -> Any:
        return {"method": v} if isinstance(v, str) else v

    @field_validator("value", mode="before")
    @classmethod
    def _value_is_a_range(cls, v: Any) -> Any:
        return _as_range(v)

    @model_validator(mode="after")
    def _form(self) -> "Check":
        if self.change is not None:
            if self.base is None or self.against is None or self.method is not None or self.value is not None:
                raise ValueError("a `change` claim needs `base` and `against` (and no `method` or `value`)")
            if self.base == self.against:
                raise ValueError("`base` and `against` select the same cells: name two methods, or tell the lines "
                                 "apart with `label` or `params`")
        elif self.value is not None:
            if self.method is None or self.base is not None or self.against is not None:
                raise ValueError("a `value` claim needs `method` (and no `base`, `against` or `change`)")
            if self.at != "budget":
                raise ValueError("`at: matched_bits` applies to `change` claims only")
            _check_order(self.value)
        else:
            raise ValueError("give `change` (with `base` and `against`) or `value` (with `method`)")
        if self.vary is not None and self.at != "matched_bits":
            raise ValueError("`vary` picks the lines of a matched-bits frontier: use it with `at: matched_bits`")
        if self.at == "matched_bits" and not self.metric.startswith(("ppl:", "bpb:")):
            raise ValueError(f"`at: matched_bits` interpolates perplexity or bpb; metric '{self.metric}' is compared "
                             f"at equal budgets only (remove `at`)")
        return self

    @property
    def sides(self) -> dict[str, SideSpec]:
        """{field name: side} of the sides this check selects."""
        names = ("base", "against") if self.change is not None else ("method",)
        return {n: getattr(self, n) for n in names}

    @property
    def claimed(self) -> tuple[float, float]:
        return self.change.range if self.change is not None else self.value  # type: ignore[return-value]

    @property
    def unit(self) -> str:
        return self.change.unit if self.change is not None else "value"


class Claim(StrictModel):
    id: str
    source: str = Field(description="a key of the file's `sources`")
    table: str | None = Field(None, description="where in the source: table, figure, section")
    statement: str = Field(description="the claim in words, as the source makes it")
    check: Check

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError(f"'{v}' is not a claim id: use lower-case letters, digits, '.', '_' and '-'")
        return v


class ClaimsFile(StrictModel):
    name: str
    description: str = ""
    sources: dict[str, Source] = Field(min_length=1)
    claims: list[Claim] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> "ClaimsFile":
        seen: set[str] = set()
        for i, claim in enumerate(self.claims):
            if claim.id in seen:
                raise ValueError(f"claims[{i}].id '{claim.id}' is used twice: give every claim its own id")
            seen.add(claim.id)
            if claim.source not in self.sources:
                raise ValueError(f"claims[{i}].source '{claim.source}' is not a key of `sources` ({', '.join(self.sources)})")
        return self


# --------------------------------------------------------------------------- metric

class Metric(StrictModel):
    """A parsed metric: kind (ppl, bpb, acc, bits, tok/s), what (dataset, task, bits field, batch)."""

    kind: Literal["ppl", "bpb", "acc", "bits", "tok/s"]
    what: str
    text: str

    @property
    def lower_is_better(self) -> bool:
        return self.kind in ("ppl", "bpb", "bits")


def parse_metric(text: str) -> Metric:
    """``ppl:wikitext2`` → Metric(ppl, wikitext2); ValueError for an unknown form."""
    m = _METRIC.match(text.strip())
    if not m:
        raise ValueError(f"unknown metric '{text}': use one of {METRIC_FORMS}")
    if m["kind"]:
        return Metric(kind=m["kind"], what=m["what"], text=text)
    if m["plain"]:
        return Metric(kind="bits", what=m["plain"], text=text)
    return Metric(kind="tok/s", what=f"b{m['batch'] or 1}", text=text)


# --------------------------------------------------------------------------- loading

def known_model_names() -> set[str]:
    """Model names a claim's pattern may match: the shape presets, their hub ids, the embedded alias."""
    from harness.models.shapes import HUB_PRESETS, SHAPE_PRESETS
    from harness.suite.schema import EMBEDDED_MODEL_NAMES

    return set(SHAPE_PRESETS) | set(HUB_PRESETS) | set(EMBEDDED_MODEL_NAMES)


def _where(path: Path, field: str, claim_id: str) -> str:
    return f"{path}: field `{field}` (claim {claim_id})"


def _check_model(pattern: str, where: str) -> None:
    from harness.suite.schema import HUB_ID

    names = known_model_names()
    if any(c in pattern for c in "*?["):
        if any(fnmatch.fnmatch(n.lower(), pattern.lower()) for n in names):
            return
    elif pattern.lower() in {n.lower() for n in names} or HUB_ID.match(pattern):
        return
    presets = ", ".join(sorted(n for n in names if "/" not in n))
    raise ClaimsError(
        f"{where}: unknown model pattern '{pattern}': give a hub id (org/name, e.g. meta-llama/Llama-2-7b-hf), a shape "
        f"preset ({presets}) or a glob that matches one of them (e.g. 'meta-llama/Llama-2-7b*')."
    )


def _check_side(side: SideSpec, path: Path, field: str, claim_id: str) -> type:
    """The side's method is registered and its params are that method's; returns its config class."""
    from harness.registry import get_method, method_names

    try:
        method = get_method(side.method)
    except HarnessError:
        raise ClaimsError(
            f"{_where(path, field + '.method', claim_id)}: unknown method '{side.method}'; registered methods: {', '.join(method_names())} "
            f"(a line's label goes in `label:`, e.g. {{method: crvq, label: crvq-r0.02-e3}})."
        ) from None
    _check_params(side.method, method.Config, side.params, _where(path, field + ".params", claim_id))
    return method.Config


def _check_params(method: str, config: type, names: Any, where: str) -> None:
    """Every name in ``names`` is a field of ``method``'s config ``config``; else a ClaimsError at ``where``."""
    fields = sorted(config.model_fields)
    for name in names:
        if name not in fields:
            raise ClaimsError(f"{where}: '{name}' is not a parameter of {method}; use one of {', '.join(fields)}.")


def _check_metric(metric: str, where: str) -> None:
    from harness.suite.schema import KNOWN_DATASETS
    from harness.tasks import PACK_TASKS, PAPER_TASKS

    try:
        parsed = parse_metric(metric)
    except ValueError as exc:
        raise ClaimsError(f"{where}: {exc}.") from None
    if parsed.kind in ("ppl", "bpb") and parsed.what not in KNOWN_DATASETS:
        raise ClaimsError(
            f"{where}: unknown metric '{metric}': unknown dataset '{parsed.what}'; use {parsed.kind}:<dataset> with one "
            f"of {', '.join(d for d in KNOWN_DATASETS if d != 'redpajama')}."
        )
    if parsed.kind == "acc" and parsed.what != "avg":
        from harness.metrics.zeroshot import unknown_tasks

        unknown = unknown_tasks([parsed.what])
        if unknown:
            close = unknown[parsed.what]
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ClaimsError(
                f"{where}: unknown metric '{metric}': unknown zero-shot task '{parsed.what}' (neither the offline pack's "
                f"nor one of lm-eval's); {hint}use acc:avg or acc:<task> with the task of the suite, e.g. "
                f"{', '.join((*PAPER_TASKS, *PACK_TASKS))}."
            )


def load_claims(path: str | os.PathLike) -> ClaimsFile:
    """Read and validate a claims file: schema, then the methods, params, metrics and model
    patterns it names. Raises :class:`ClaimsError` (one paragraph: file, field, fix)."""
    p = Path(path)
    if not p.is_file():
        raise ClaimsError(f"{p}: claims file not found. Give the path of a YAML claims file, e.g. suites/claims/crvq.yaml.")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ClaimsError(f"{p}: not valid YAML ({str(exc).splitlines()[0]}). Fix the syntax at the line it names.") from exc
    if not isinstance(raw, dict):
        raise ClaimsError(f"{p}: a claims file must be a YAML mapping with `name`, `sources` and `claims`.")
    try:
        claims = ClaimsFile.model_validate(raw)
    except ValidationError as exc:  # the suite loader's one-paragraph message

        raise ClaimsError(validation_message(
            str(p), exc, "claims file", "Fix the claims file (format: harness/claims/schema.py, example: "
            "suites/claims/crvq.yaml).")) from None
    for i, claim in enumerate(claims.claims):
        field = f"claims[{i}].check"
        _check_metric(claim.check.metric, _where(p, field + ".metric", claim.id))
        _check_model(claim.check.model, _where(p, field + ".model", claim.id))
        configs = {name: _check_side(side, p, f"{field}.{name}", claim.id) for name, side in claim.check.sides.items()}
        if claim.check.vary:
            _check_params(claim.check.against.method, configs["against"], claim.check.vary,
                          _where(p, field + ".vary", claim.id))
    return claims
