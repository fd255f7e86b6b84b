"""User-facing errors.

`DynaloraError` is raised for anything a user can fix (bad flag, missing file, impossible budget).
The CLI prints its message as one line on stderr and exits with code 2; library callers catch it
like any other exception. Programming errors stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations

# What a runtime-only install (`pip install dynalora`: onnxruntime, tokenizers, numpy, psutil) runs to get
# training, export, fusion and the distributed launchers; every "needs the training stack" message names it.
TRAIN_INSTALL = "pip install 'dynalora[train]'"


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


def not_utf8_message(path: object, data: bytes, exc: UnicodeDecodeError) -> str:
    """'PATH is not UTF-8 text (byte 0xff at offset 12, line 2); ...' for a file that failed to decode.

    `exc` must come from decoding `data` as a whole, so that its offsets are file offsets.
    """
    offset = exc.start
    line = data.count(b"\n", 0, offset) + 1
    return (f"{path} is not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}, line {line}); "
            "re-save it as UTF-8")
