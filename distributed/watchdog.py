"""Deadlines for every distributed stage: a stage that does not finish in time ends the worker.

    watchdog = Watchdog(timeout_s=dist_timeout_s())
    with watchdog.stage("process-group init"):
        dist.init_process_group(...)
    watchdog.arm("training step")      # re-armed after every optimizer step (a heartbeat)
    watchdog.disarm("training step")

Why a watchdog and not only the `timeout=` of `init_process_group`: that timeout bounds gloo's
*collectives*, but not every path of gloo's connection set-up. After a worker crash, a restarted
group can sit forever in `init_process_group -> _new_process_group_helper -> ProcessGroupGloo`
(connectFullMesh): the passive side of gloo's TCP pair set-up waits for its peer without a
deadline (pytorch/gloo#520), so one lost or late connection leaves both workers idle. A worker
that hangs is never restarted; a worker that exits is (torchrun --max-restarts, Ray Train
FailureConfig.max_failures). So every stage here runs under a deadline, and when one passes the
worker prints one line and ends itself with os._exit: a thread cannot interrupt a blocked C++
call, but it can end the process, which releases the sockets and lets the launcher act.

Stages: rendezvous + process-group init, DDP construction, each collective of the rank controller
(all-reduce, gather / barrier, checkpoint agreement), each training step (gradient all-reduce
inside DDP's backward), process-group teardown. The bound is DYNALORA_DIST_TIMEOUT_S (default
600 s): no single stage may take longer. Raise it for models whose one training step, or
rank 0's evaluation between steps, takes minutes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

from dynalora.errors import ConfigError

DEFAULT_TIMEOUT_S = 600.0
EXIT_STALLED = 75  # EX_TEMPFAIL: "try again" (the launcher restarts the group if it may)


def dist_timeout_s(raw: str | None = None) -> float:
    """DYNALORA_DIST_TIMEOUT_S as seconds (> 0), else the default; a bad value is a ConfigError."""
    if raw is None:
        raw = os.environ.get("DYNALORA_DIST_TIMEOUT_S")
    if raw is None or raw == "":
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"DYNALORA_DIST_TIMEOUT_S must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"DYNALORA_DIST_TIMEOUT_S must be a finite number of seconds > 0, got {raw!r}")
    return value


def _exit_stalled(message: str) -> None:  # pragma: no cover - ends the process
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(EXIT_STALLED)


class Watchdog:
    """One daemon thread that ends the process when an armed stage outlives its deadline.

    `on_expire` receives the one-line message; the default prints it and calls os._exit(75).
    Tests pass their own to observe expiry without ending the test process.
    """

    def __init__(self, timeout_s: float, *, rank: int | None = None,
                 on_expire: Callable[[str], None] = _exit_stalled) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self.rank = rank
        self._on_expire = on_expire
        self._deadlines: dict[str, float] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.expired: list[str] = []

    # ---- arming -----------------------------------------------------------------------------
    def arm(self, stage: str, timeout_s: float | None = None) -> None:
        """Start (or restart) the deadline of `stage`."""
        with self._cond:
            self._deadlines[stage] = time.monotonic() + (timeout_s or self.timeout_s)
            self._ensure_thread()
            self._cond.notify()

    def disarm(self, stage: str) -> None:
        with self._cond:
            self._deadlines.pop(stage, None)
            self._cond.notify()

    @contextlib.contextmanager
    def stage(self, name: str, timeout_s: float | None = None) -> Iterator[None]:
        self.arm(name, timeout_s)
        try:
            yield
        finally:
            self.disarm(name)

    def armed(self) -> list[str]:
        with self._cond:
            return sorted(self._deadlines)

    # ---- the thread -------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="dynalora-watchdog", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                late = [(d, s) for s, d in self._deadlines.items() if d <= now]
                if late:
                    _deadline, stage = min(late)
                    self._deadlines.pop(stage)
                    self.expired.append(stage)
                    who = f"rank {self.rank}: " if self.rank is not None else ""
                    message = (
                        f"dynalora: error: {who}{stage} did not finish within {self.timeout_s:g} s "
                        "(a peer died or stalled); this worker exits so the launcher can restart the group "
                        "(DYNALORA_DIST_TIMEOUT_S sets the bound)"
                    )
                    self._cond.release()
                    try:
                        self._on_expire(message)
                    finally:
                        self._cond.acquire()
                    continue
                wait = min(self._deadlines.values()) - now if self._deadlines else None
                self._cond.wait(timeout=wait)
