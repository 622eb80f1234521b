"""Where tuneloop keeps state: one directory, `./.tuneloop` unless `TUNELOOP_HOME` says otherwise."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The workspace root. Read on every call so tests and users can point it elsewhere per process."""
    return Path(os.environ.get("TUNELOOP_HOME", ".tuneloop")).expanduser().resolve()


def models_dir() -> Path:
    """Cache of converted base models (the built-in model lands here)."""
    return home() / "models"


def runs_dir() -> Path:
    """One sub-directory per recipe name, one below that per run."""
    return home() / "runs"
