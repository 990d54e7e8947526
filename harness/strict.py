"""The strict pydantic base of every user-written file (suites, claims, reference numbers), the
citation of a source those files share, and how their validation errors read (one paragraph)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["Source", "StrictModel", "format_loc", "validation_message"]


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo never passes silently); validated values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(StrictModel):
    """Where published numbers or claims come from: a title (paper, table, README section), the
    version read, a URL and a note."""

    title: str
    version: str | None = Field(None, description="the version read: arXiv version, venue, commit, date")
    url: str | None = None
    note: str | None = None


def format_loc(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as the user wrote it: `methods[2].params.bits` (internal
    union/validator steps left out)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "ModelSpec", "ExecutorSpec", "literal['local']") or "function-after" in str(part):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def validation_message(
    path: str, exc: ValidationError, what: str = "suite", fix: str = "Fix the suite file and run `harness validate` again."
) -> str:
    """One paragraph from a pydantic error: the file, up to four fields with their problem, the fix
    (also used for other validated YAML files, e.g. claims files: `what` and `fix`)."""
    parts = []
    for err in exc.errors()[:4]:
        loc = format_loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; unknown keys are not allowed)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        parts.append(f"field `{loc}`: {msg}")
    more = f" (and {len(exc.errors()) - 4} more)" if len(exc.errors()) > 4 else ""
    return f"{path}: invalid {what} — " + "; ".join(parts) + more + f". {fix}"
