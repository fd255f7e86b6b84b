"""Moved to `dynalora.atomic` (shared by every sub-package, edge_runtime included); re-exported for one release."""

from dynalora.atomic import _fsync_dir, append_line, atomic_dir, atomic_path, write_json, write_text

__all__ = ["_fsync_dir", "append_line", "atomic_dir", "atomic_path", "write_json", "write_text"]
