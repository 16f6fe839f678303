"""Exceptions that carry a one-line, user-facing message.

Library code raises these and never prints or exits; the CLI turns them into one line on stderr
and a non-zero exit status. Messages name the file or option first, then the problem, then (where
there is one) what to do next.
"""

from __future__ import annotations

from pathlib import Path


class PixelwiseError(Exception):
    """Base class: ``str(err)`` is a complete one-line message for the user."""


class DataError(PixelwiseError):
    """A data file or folder is unreadable, malformed or inconsistent."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(PixelwiseError):
    """An option, model name, run directory or configuration value is invalid."""
