"""Errors of the distributed launchers; the CLI prints each as one line and exits with code 2."""

from __future__ import annotations

from dynalora.errors import DynaloraError


class ClusterError(DynaloraError):
    """No Ray cluster where one was asked for, too few resources, or a cluster that will not start."""


class DistributedError(DynaloraError):
    """Distributed training failed after the allowed restarts (details in the worker logs)."""
