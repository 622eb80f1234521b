"""The error users see: a message in recipe terms, no traceback (unless --debug), the library's error as cause."""

from __future__ import annotations


class TuneloopError(Exception):
    """Something the user can fix; the CLI prints the message and exits 1."""


class RunStopped(TuneloopError):
    """A run stopped on purpose before it finished: a sweep pruned it, or it would have overrun the budget."""
