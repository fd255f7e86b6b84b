"""Output folders that nothing can destroy: an ownership marker, one writer at a time, replace on completion.

    check_replaceable(out, "run")        refuse --overwrite of a folder dynalora did not write
    with OutLock(out): ...               one process writes `out` at a time (released on exit, even on a crash)
    stage = staging_path(out)            where an --overwrite builds the new run, beside the old one
    swap_into_place(stage, out)          the old run is replaced only once the new one is complete

Every folder dynalora writes (a training run, an export, a fusion) carries a small marker file,
`.dynalora`, that names its kind. `--overwrite` replaces only such a folder: a folder without the
marker is someone else's, and dynalora refuses to touch it (`--out .` or `--out ~` included).

Locks are `fcntl.flock` locks on a file *beside* the folder (`.NAME.dynalora-lock`), so they
survive the swap of the folder itself. The kernel drops a flock when its process dies, so a lock
left by a killed process is stale by construction: the next writer takes it over (and says so).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from dynalora.atomic import _fsync_dir, write_json
from dynalora.errors import ConfigError

MARKER = ".dynalora"
KINDS = ("run", "export", "fusion")


# ---- marker ---------------------------------------------------------------------------------
def write_marker(folder: Path, kind: str, **extra: Any) -> None:
    """Mark `folder` as written by dynalora (kind: run | export | fusion)."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    from dynalora import __version__

    write_json(Path(folder) / MARKER, {"kind": kind, "dynalora_version": __version__, **extra})


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of `folder`, or None when it has none (or an unreadable one)."""
    path = Path(folder) / MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") in KINDS else None


def check_out_path(out: Path, flag: str = "--out") -> None:
    """Refuse an --out that exists as a file, or whose nearest existing ancestor is not a writable folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out} exists and is not a folder: pick a folder path")
    target = out if out.is_dir() else out.parent
    while not target.exists() and target.parent != target:
        target = target.parent
    if not target.is_dir():
        raise ConfigError(f"{flag} {out} is not writable ({target} is a file, not a folder): pick another path")
    try:  # a real file, not os.access: root passes access checks on read-only filesystems too
        fd, tmp = tempfile.mkstemp(prefix=".dynalora-write-check.", dir=target)
    except OSError as exc:
        raise ConfigError(f"{flag} {out} is not writable ({exc.strerror} in {target}): pick another folder") from None
    os.close(fd)
    os.unlink(tmp)


def check_replaceable(out: Path, kind: str, flag: str = "--out") -> None:
    """Raise ConfigError unless `--overwrite` may replace `out` (absent, empty, or a dynalora `kind` folder)."""
    out = Path(out)
    check_out_path(out, flag)
    if not out.exists() or not any(out.iterdir()):
        return
    marker = read_marker(out)
    if marker is None:
        raise ConfigError(
            f"{flag} {out} holds files dynalora did not write (no {MARKER} marker): --overwrite replaces only "
            "dynalora's own folders; choose another folder or remove it yourself"
        )
    if marker["kind"] != kind:
        raise ConfigError(f"{flag} {out} is a dynalora {marker['kind']} folder, not a {kind}: --overwrite will not replace it")


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


# ---- replace when complete ------------------------------------------------------------------
def staging_path(out: Path) -> Path:
    """Where an --overwrite builds its new folder, beside the old one (same filesystem: rename is atomic)."""
    out = Path(out)
    return out.with_name(f".{out.name}.dynalora-new")


def final_path(folder: Path) -> Path:
    """The folder a staged run replaces when it completes (itself when it is not staged)."""
    folder = Path(folder)
    marker = read_marker(folder) or {}
    target = marker.get("replaces")
    return folder.with_name(target) if isinstance(target, str) and target else folder


def swap_into_place(stage: Path, out: Path) -> None:
    """Replace `out` with the complete folder `stage`: two renames; the old folder is removed last."""
    stage, out = Path(stage), Path(out)
    old = out.with_name(f".{out.name}.dynalora-old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)
    _fsync_dir(out.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


# ---- single writer --------------------------------------------------------------------------
def lock_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.dynalora-lock")


class OutLock:
    """An exclusive, non-blocking lock on `out` for the lifetime of one writer process.

    `acquire()` raises ConfigError naming the holder when another live process holds it. A lock
    file whose process died is stale: flock has already released it, and it is simply taken over.
    """

    def __init__(self, out: Path, what: str = "run") -> None:
        self.out = Path(out)
        self.path = lock_path(self.out)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutLock:
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                error = _busy(self.out, fd)
                os.close(fd)
                raise error from None
            # The file may have been unlinked by its previous holder between our open and flock:
            # then we hold a lock on a dead inode; open again.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # unlink while holding: a waiter re-opens and finds the new file
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_unlocked(out: Path) -> None:
    """Raise ConfigError if a live process holds the lock of `out` (leaves nothing behind)."""
    path = lock_path(out)
    if not path.exists():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(out, fd) from None
    finally:
        os.close(fd)


def _busy(out: Path, fd: int) -> ConfigError:
    """The one-line error for a folder whose lock (open as `fd`) another live process holds."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        holder = f"PID {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError):
        holder = "PID unknown"
    return ConfigError(f"{out} is being written by another dynalora process ({holder}): wait for it to finish, or pick another --out")
