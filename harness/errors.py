"""Exceptions the CLI turns into a one-paragraph message and exit code 2."""
from __future__ import annotations


class HarnessError(ValueError):
    """A user-facing error: the message names the file, the field and the fix."""


class SuiteError(HarnessError):
    """A suite file is malformed or names something that does not exist."""


class UnknownMethodError(HarnessError):
    """A method name is not registered."""


class ModelLoadError(HarnessError):
    """A model cannot be located or its architecture is not supported."""


class DataError(HarnessError):
    """A dataset cannot be located or loaded."""


class UnknownEvaluationError(HarnessError):
    """An evaluation name is not registered."""


class EvaluationPluginError(HarnessError):
    """A registered evaluation breaks the plugin contract (`harness.evaluations`): its `Config`,
    its `name`, an entry point that takes a built-in's name, or a name that is a cell metric."""
