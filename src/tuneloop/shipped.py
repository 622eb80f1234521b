"""The files tuneloop ships inside its package, found wherever it is installed.

Configs (accelerate/DeepSpeed launcher profiles, the price table, evaluation suites, model defaults, feedback
campaigns, sweeps), the built-in datasets and the example recipes live in `tuneloop/_shipped/` and are reached
through `importlib.resources`, so a wheel installed into any environment finds them, not only an editable install
from a clone. In a clone, `configs/`, `data/` and `recipes/` at the repository root are links to them, which keeps
every path the docs show. Users copy what they edit with `tuneloop init` (tuneloop.cli.project).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

KINDS = ("configs", "data", "recipes")


def root() -> Path:
    """The shipped tree. An installed package is plain files (a wheel unpacks; editable installs point at src/).
    Imports nothing of tuneloop: the config layer, the floor, finds shipped defaults through it."""
    ref = files("tuneloop").joinpath("_shipped")
    if not isinstance(ref, Path) or not ref.is_dir():
        raise RuntimeError(f"tuneloop's shipped files are missing from {ref}: reinstall tuneloop")
    return ref


def configs() -> Path:
    return root() / "configs"


def data() -> Path:
    return root() / "data"


def recipes() -> Path:
    return root() / "recipes"


def locate(relative: str | Path) -> Path | None:
    """A path as the docs and the shipped profiles write it (`configs/deepspeed/zero3.json`), inside the package:
    how a relative path in a launcher profile still resolves when the command runs from another directory."""
    parts = Path(relative).parts
    if not parts or parts[0] not in KINDS or ".." in parts:
        return None
    candidate = root().joinpath(*parts)
    return candidate if candidate.is_file() else None
