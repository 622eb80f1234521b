"""Built-in datasets shipped with tuneloop, with the tasks defined on them and each task's default format."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tuneloop import shipped
from tuneloop.config.schema import Format


@dataclass(frozen=True)
class BuiltinTask:
    dataset: str
    name: str
    kind: str  # generation | classification | preference | unpaired
    target: str | None
    labels: tuple[str, ...] | None
    format: Format


def data_root() -> Path:
    """`TUNELOOP_DATA_DIR`, else the datasets shipped inside the package (tuneloop.shipped)."""
    env = os.environ.get("TUNELOOP_DATA_DIR")
    return Path(env) if env else shipped.data()


def names() -> list[str]:
    return ["debian-descriptions", "debian-synopsis-pairs"]


@cache
def info(dataset: str) -> dict[str, Any]:
    return json.loads((data_root() / dataset / "tasks.json").read_text())


def split_file(dataset: str, split: str) -> Path:
    return data_root() / dataset / f"{split}.jsonl"


def task(dataset: str, name: str) -> BuiltinTask:
    spec = info(dataset)["tasks"][name]
    labels = tuple(spec["labels"]) if "labels" in spec else None
    return BuiltinTask(dataset, name, spec["kind"], spec.get("target"), labels, _default_format(name, labels))


def columns(dataset: str, task_name: str | None) -> list[str]:
    """Columns a task's rows have: the dataset's, or the unpaired rows derived from preference pairs."""
    if task_name is not None and info(dataset)["tasks"].get(task_name, {}).get("kind") == "unpaired":
        return [*(c for c in info(dataset)["columns"] if c not in ("chosen", "rejected")), "completion", "label"]
    return list(info(dataset)["columns"])


def unpair(ds: Any) -> Any:
    """Preference pairs -> KTO's unpaired rows: each pair gives a desirable (chosen) and an undesirable
    (rejected) completion for the same prompt, one after the other."""
    from datasets import Dataset

    rows = []
    for row in ds:
        rest = {k: v for k, v in row.items() if k not in ("chosen", "rejected")}
        rows.append({**rest, "completion": row["chosen"], "label": True})
        rows.append({**rest, "completion": row["rejected"], "label": False})
    return Dataset.from_list(rows)


SYNOPSIS_SYSTEM = "You write the one-line synopsis of a Debian package from its long description."


def _default_format(name: str, labels: tuple[str, ...] | None) -> Format:
    if name == "synopsis":
        return Format(system=SYNOPSIS_SYSTEM, prompt="{description}", completion="{synopsis}")
    if name == "preference":
        return Format(system=SYNOPSIS_SYSTEM, prompt="{description}", chosen="{chosen}", rejected="{rejected}")
    if name == "kto":
        return Format(system=SYNOPSIS_SYSTEM, prompt="{description}", completion="{completion}", label="label")
    if name == "section":
        choices = ", ".join(labels or ())
        return Format(
            system="You classify Debian packages into archive sections.",
            prompt=f"Which Debian section does this package belong to? Answer with one of: {choices}."
            "\n\n{description}",
            completion="{section}",
        )
    raise KeyError(name)
