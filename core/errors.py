"""Moved to `dynalora.errors` (shared by every sub-package, edge_runtime included); re-exported for one release."""

from dynalora.errors import CheckpointError, ConfigError, DataError, DynaloraError, ModelError, not_utf8_message

__all__ = ["CheckpointError", "ConfigError", "DataError", "DynaloraError", "ModelError", "not_utf8_message"]
