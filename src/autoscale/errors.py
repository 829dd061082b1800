"""The error types autoscale raises for bad input.

Every error we raise on purpose derives from :class:`AutoScaleError`; its message names the
file (or config key, or checkpoint) and the problem, so the CLI can print it as one line.
"""
from __future__ import annotations

from os import PathLike


class AutoScaleError(Exception):
    """Base class of all deliberate autoscale errors (bad data, config, checkpoint, ...)."""


class DataError(AutoScaleError):
    """Bad dataset input: missing file, corrupt image, malformed annotation, bad coordinates.

    ``DataError(path, problem)`` formats as ``"<path>: <problem>"``.
    """

    def __init__(self, path: str | PathLike[str] | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class ConfigError(AutoScaleError):
    """A missing, malformed or unknown configuration key, preset or value."""


class CheckpointError(AutoScaleError):
    """A checkpoint that is corrupt, of the wrong variant, or whose keys do not match."""
