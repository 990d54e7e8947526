"""The suite's `report:` section: tables, plots, paired comparisons, sweeps, claims, paper layout."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.strict import StrictModel

__all__ = ["PAPER_METHODS", "ComparePair", "PaperSpec", "ReportSpec", "SweepSpec"]


class ComparePair(StrictModel):
    """A paired comparison for the report (`harness.report.compare`): method labels or names."""

    base: str = Field(description="method label (or name) compared against")
    against: str = Field(description="method label (or name) whose difference from `base` is reported")


class SweepSpec(StrictModel):
    """A parameter sweep for the report (`harness.report.sweeps`): perplexity vs one method parameter."""

    method: str = Field(description="method name whose cells form the sweep, e.g. crvq")
    x: str = Field(description="the method parameter on the x axis, e.g. critical_ratio")
    lines: str | None = Field(None, description="a second parameter: one series per value, e.g. num_extended_codebooks")


#: The paper layout's methods by default: {method: name in the table}, in the order of its rows.
PAPER_METHODS = {"none": "Unquantized", "rtn": "RTN", "gptq": "GPTQ", "aqlm": "AQLM", "crvq": "CRVQ"}


class PaperSpec(StrictModel):
    """The paper layout (`harness report --layout paper`, `harness.report.paper`)."""

    methods: dict[str, str] = Field(
        default_factory=lambda: dict(PAPER_METHODS),
        description=(
            "{method: name shown} in row order: within a model, after the unquantized rows and by bits "
            "descending, rows of equal bits follow this order (by the cell's method name); methods not "
            "listed come after, alphabetically. A row whose method label is listed shows the name given, "
            "e.g. {none: Unquantized, rtn: RTN, gptq: GPTQ, aqlm: AQLM, crvq: CRVQ} (the default)"
        ),
    )


class ReportSpec(StrictModel):
    tables: list[Literal["markdown", "latex", "csv"]] = Field(default_factory=lambda: ["markdown", "latex", "csv"])
    plots: list[Literal["png", "svg"]] = Field(default_factory=lambda: ["png", "svg"])
    html: bool = Field(True, description="also write report.html: the whole report in one self-contained page")
    compare: list[ComparePair] = Field(
        default_factory=list, description="paired comparisons written to tables/compare.{md,csv}, e.g. [{base: aqlm, against: crvq}]"
    )
    sweeps: list[SweepSpec] = Field(
        default_factory=list,
        description="parameter sweeps written to tables/ and plots/sweep_*, e.g. [{method: crvq, x: critical_ratio, lines: num_extended_codebooks}]",
    )
    claims: list[str] = Field(
        default_factory=list,
        description="claims files checked against the results (`harness verify`): tables/claims.{md,csv}, e.g. [suites/claims/crvq.yaml]",
    )
    paper: PaperSpec = Field(default_factory=PaperSpec, description="the paper layout's method names and order")
