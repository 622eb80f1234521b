"""Built-in datasets shipped with tuneloop, with the tasks defined on them and each task's default format."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tuneloop.config.schema import Format


@dataclass(frozen=True)
class BuiltinTask:
    dataset: str
    name: str
    kind: str  # generation | classification
    target: str
    labels: tuple[str, ...] | None
    format: Format


def data_root() -> Path:
    """`TUNELOOP_DATA_DIR`, else the repository's `data/` (tuneloop installs in editable mode from a clone)."""
    env = os.environ.get("TUNELOOP_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "data"


def names() -> list[str]:
    return ["debian-descriptions"]


@cache
def info(dataset: str) -> dict[str, Any]:
    return json.loads((data_root() / dataset / "tasks.json").read_text())


def split_file(dataset: str, split: str) -> Path:
    return data_root() / dataset / f"{split}.jsonl"


def task(dataset: str, name: str) -> BuiltinTask:
    spec = info(dataset)["tasks"][name]
    labels = tuple(spec["labels"]) if "labels" in spec else None
    return BuiltinTask(dataset, name, spec["kind"], spec["target"], labels, _default_format(name, labels))


def _default_format(name: str, labels: tuple[str, ...] | None) -> Format:
    if name == "synopsis":
        return Format(
            system="You write the one-line synopsis of a Debian package from its long description.",
            prompt="{description}",
            completion="{synopsis}",
        )
    if name == "section":
        choices = ", ".join(labels or ())
        return Format(
            system="You classify Debian packages into archive sections.",
            prompt=f"Which Debian section does this package belong to? Answer with one of: {choices}."
            "\n\n{description}",
            completion="{section}",
        )
    raise KeyError(name)
