"""Moved to `dynalora.fusion.cli` (`dynalora fuse train|eval`); this alias re-exports it for one release."""

from dynalora.fusion.cli import register

__all__ = ["register"]
