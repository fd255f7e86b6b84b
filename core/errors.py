"""User-facing errors.

`DynaloraError` is raised for anything a user can fix (bad flag, missing file, impossible budget).
The CLI prints its message as one line on stderr and exits with code 2; library callers catch it
like any other exception. Programming errors stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations


class DynaloraError(Exception):
    """An error caused by the user's input; the message says what to change."""

    exit_code = 2


class ConfigError(DynaloraError, ValueError):
    """An invalid configuration value."""


class DataError(DynaloraError):
    """Missing, malformed or inconsistent data."""


class ModelError(DynaloraError):
    """A model that cannot be found, loaded or adapted."""


class CheckpointError(DynaloraError):
    """A corrupt, truncated or incompatible checkpoint / adapter / run folder."""
