"""The error users see: a message in recipe terms, no traceback (unless --debug), the library's error as cause."""

from __future__ import annotations


class TuneloopError(Exception):
    """Something the user can fix; the CLI prints the message and exits 1."""


class UsageError(TuneloopError):
    """What the user named does not exist or cannot be used that way (a misspelt suite, an unknown reference): the
    CLI exits 2, as for any other usage or validation error, so scripts can tell it from a failed run."""


class RunStopped(TuneloopError):
    """A run stopped on purpose before it finished: a sweep pruned it, or it would have overrun the budget."""
