"""Export errors: one class, a `DynaloraError`, so the CLI prints one line and exits with code 2."""

from __future__ import annotations

from dynalora.errors import DynaloraError


class ExportError(DynaloraError):
    """A run, model or option that cannot be exported as asked; the message says what to change."""
