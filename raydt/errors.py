"""The one exception type for mistakes a user can fix.

The CLI prints a :class:`RaydtError` as a single ``error: ...`` line and exits with status
2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RaydtError(Exception):
    """A user-facing error: the message names the file, key or value and how to fix it."""


class ConfigError(RaydtError):
    """A spec file or override that cannot be turned into a valid config."""


class DataError(RaydtError):
    """A dataset URI, file or generation request that cannot be served."""
