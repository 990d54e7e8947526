"""The strict pydantic base of every user-written file (suites, claims, reference numbers), and
the citation of a source those files share."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Source", "StrictModel"]


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
