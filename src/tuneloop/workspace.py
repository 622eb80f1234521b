"""Where tuneloop keeps state, found the way git finds its repository.

The workspace (runs, the MLflow store and registry copies, the database of keys, requests and votes) is
`TUNELOOP_HOME` when that is set (an explicit choice wins, as `GIT_DIR` does), else the nearest `.tuneloop/` in the
current directory or one of its parents, else `./.tuneloop`, which the first command that writes creates (the CLI
says so first). So every command run anywhere inside a project sees the same registry and runs.

Converted base models belong to no workspace: they live in one user-level cache shared by all of them
(`TUNELOOP_CACHE`, else `$XDG_CACHE_HOME/tuneloop`, else `~/.cache/tuneloop`), as the Hugging Face hub cache does,
so a new workspace never converts the built-in model again.

Read on every call: tests and users point these elsewhere per process.
"""

from __future__ import annotations

import os
from pathlib import Path

DIRNAME = ".tuneloop"


def find(start: Path | None = None) -> Path | None:
    """The nearest `.tuneloop/` in `start` (default: the current directory) or its parents."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / DIRNAME).is_dir():
            return directory / DIRNAME
    return None


def home() -> Path:
    """The workspace root: TUNELOOP_HOME, else the nearest `.tuneloop/` here or above, else `./.tuneloop`."""
    explicit = os.environ.get("TUNELOOP_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    return find() or (Path.cwd() / DIRNAME).resolve()


def is_new() -> bool:
    """True when no workspace exists yet where `home()` points (the first command that writes will create it)."""
    return not home().is_dir()


def cache_dir() -> Path:
    """User-level cache shared by every workspace: TUNELOOP_CACHE, else $XDG_CACHE_HOME/tuneloop, else ~/.cache."""
    explicit = os.environ.get("TUNELOOP_CACHE")
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser().resolve() / "tuneloop"


def models_dir() -> Path:
    """Converted base models (the built-in model lands here once per user, not once per workspace)."""
    return cache_dir() / "models"


def runs_dir() -> Path:
    """One sub-directory per recipe name, one below that per run."""
    return home() / "runs"
