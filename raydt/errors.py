"""The exception types for failures raydt can name.

The CLI prints a :class:`RaydtError` as a single ``error: ...`` line: exit status 2 for bad
input (the user fixes the spec, the file or the flag), 1 for a :class:`RunFailed` (the
input was fine and the run itself failed). Anything else is a bug and keeps its traceback.
Every RaydtError is permanent: running the same thing again fails the same way, so Ray
Train does not retry it (only lost workers and nodes are retried).
"""

from __future__ import annotations


class RaydtError(Exception):
    """A user-facing error: the message names the file, key or value and how to fix it."""

    exit_status = 2


class ConfigError(RaydtError):
    """A spec file or override that cannot be turned into a valid config."""


class DataError(RaydtError):
    """A dataset URI, file or generation request that cannot be served."""


class RunFailed(RaydtError):
    """A run that started from valid input and failed (a trial of a sweep, a training run)."""

    exit_status = 1


class Diverged(RunFailed):
    """The training loss became NaN or infinite."""


class EvalTimeout(RunFailed):
    """An evaluation took longer than ``eval.timeout_s``: it would overrun again if retried."""
