"""Check a stage's `args` against the TRL config dataclass of its method, without importing TRL.

`tuneloop validate` must not import torch (start-up under a second), yet trainer arguments must be checked
field by field. So the fields of each TRL config dataclass (name, accepted types, choices, default, help) are
kept in `trainer_fields.json`, generated from the installed TRL by `python scripts/gen_trainer_fields.py`;
a test regenerates it and fails when the committed copy is stale (for example after a TRL upgrade).
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from pathlib import Path
from typing import Any

from tuneloop.config import arg_ranges

SNAPSHOT = Path(__file__).with_name("trainer_fields.json")

# method -> TRL config class ("module:Class" for trl.experimental). A method is added here when its trainer module
# lands in tuneloop.train. Stable TRL 1.x trainers first, then the experimental ones a stage must opt into.
CONFIG_CLASSES: dict[str, str] = {
    "sft": "SFTConfig",
    "reward": "RewardConfig",
    "dpo": "DPOConfig",
    "kto": "KTOConfig",
    "grpo": "GRPOConfig",
    "rloo": "RLOOConfig",
    "distill": "DistillationConfig",
    "orpo": "trl.experimental.orpo:ORPOConfig",
    "cpo": "trl.experimental.cpo:CPOConfig",
}
EXPERIMENTAL = frozenset({"orpo", "cpo"})

# Methods recipes may still ask for, and what to say instead of "unknown method".
REMOVED: dict[str, str] = {
    "ppo": "TRL 1.x removed PPO (PPOTrainer and value-head models are gone); use `grpo` or `rloo`, which optimise "
    "the same kind of reward without a value model (docs/methods.md)",
    "online_dpo": "online DPO is only in trl.experimental and tuneloop does not wrap it; use `grpo` with a reward "
    "model, or `dpo` on pairs you generated",
    "gkd": "GKD moved to TRL's stable `DistillationTrainer`: use `method: distill` (`mode: on_policy`)",
}

# Arguments a recipe may not set: tuneloop sets them itself, or the launcher does.
LAUNCHER = (
    "a launcher setting: it belongs in an accelerate profile (configs/accelerate/), "
    "started with `accelerate launch --config_file ...`"
)
MANAGED_ARGS: dict[str, str] = {
    "output_dir": "set by tuneloop: each run writes to its own directory; choose it with `--run-dir`",
    "resume_from_checkpoint": "set by tuneloop: use `tuneloop train --resume`",
    "deepspeed": LAUNCHER,
    "fsdp": LAUNCHER,
    "fsdp_config": LAUNCHER,
    "teacher_model_name_or_path": "set by tuneloop from the stage's `teacher:` (default: the model it starts from)",
    "teacher_model_init_kwargs": "set by tuneloop: the teacher loads with the recipe's `base_model` settings",
}

# Arguments older recipes and tutorials still use, gone from the installed transformers/TRL, and what to write.
GONE_ARGS: dict[str, str] = {
    "warmup_ratio": "transformers 5 removed it: `warmup_steps` takes a fraction in [0, 1) of the total steps "
    "(warmup_steps: 0.1)",
    "max_prompt_length": "TRL 1.x removed it from its trainers: `max_length` bounds prompt and completion together "
    "(`max_completion_length` for methods that generate)",
}


def snapshot() -> dict[str, Any]:
    """Describe every field of every config class in CONFIG_CLASSES (imports TRL; used by the generator)."""
    import dataclasses
    import enum
    import types
    import typing

    import trl

    def describe(tp: Any) -> dict[str, Any]:
        kinds: set[str] = set()
        choices: list[Any] = []
        nullable = False

        def walk(t: Any) -> None:
            nonlocal nullable
            origin = typing.get_origin(t)
            if t is type(None) or t is None:
                nullable = True
            elif origin in (typing.Union, types.UnionType):
                for a in typing.get_args(t):
                    walk(a)
            elif origin is typing.Literal:
                for a in typing.get_args(t):
                    kinds.add(type(a).__name__)
                    choices.append(a)
            elif isinstance(t, type) and issubclass(t, enum.Enum):
                kinds.add("str")
                choices.extend(m.value for m in t)
            elif t in (bool, int, float, str):
                kinds.add(t.__name__)
            elif t is dict or origin is dict:
                kinds.add("dict")
            elif t is list or origin in (list, tuple):
                kinds.add("list")
            else:
                kinds.add("any")

        walk(tp)
        return {"kinds": sorted(kinds), "nullable": nullable, "choices": choices or None}

    out: dict[str, Any] = {"trl_version": trl.__version__, "methods": {}}
    for method, cls_name in CONFIG_CLASSES.items():
        cls = import_config(cls_name)
        hints = typing.get_type_hints(cls)
        fields = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, enum.Enum):
                default = default.value
            try:
                json.dumps(default)
            except TypeError:
                default = repr(default)
            fields[f.name] = {
                **describe(hints[f.name]),
                "default": default,
                "help": " ".join(str(f.metadata.get("help", "")).split()),
            }
        out["methods"][method] = {"config_class": cls_name.rpartition(":")[2], "fields": fields}
    return out


def import_config(name: str) -> type:
    """`SFTConfig` from `trl`, or `module:Class` (trl.experimental)."""
    import importlib

    module, _, cls = name.rpartition(":")
    return getattr(importlib.import_module(module or "trl"), cls)


@cache
def _load() -> dict[str, Any]:
    return json.loads(SNAPSHOT.read_text())


def methods() -> list[str]:
    return list(CONFIG_CLASSES)


def fields(method: str) -> dict[str, dict[str, Any]]:
    return _load()["methods"][method]["fields"]


def config_class(method: str) -> str:
    return CONFIG_CLASSES[method].rpartition(":")[2]


def closest(word: str, options: list[str]) -> str | None:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return match[0] if match else None


def _type_ok(value: Any, spec: dict[str, Any]) -> bool:
    if value is None:
        return spec["nullable"] or "any" in spec["kinds"]
    kinds = spec["kinds"]
    if "any" in kinds:
        return True
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return bool({"int", "float"} & set(kinds))
    if isinstance(value, float):
        return "float" in kinds
    if isinstance(value, str):
        return "str" in kinds
    if isinstance(value, dict):
        return "dict" in kinds
    if isinstance(value, list):
        return "list" in kinds
    return False


def _kind_words(spec: dict[str, Any]) -> str:
    names = {
        "bool": "true/false",
        "int": "an integer",
        "float": "a number",
        "str": "a string",
        "dict": "a mapping",
        "list": "a list",
    }
    words = [names.get(k, k) for k in spec["kinds"]]
    if spec["nullable"]:
        words.append("null")
    return " or ".join(words)


def check_args(method: str, args: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (key, problem) for every argument the method's TRL config would reject or tuneloop manages: its name,
    its type, then its value (arg_ranges), so a recipe that validates does not die at train time."""
    known = fields(method)
    problems: list[tuple[str, str]] = []
    typed: dict[str, Any] = {}  # the arguments whose name and type passed: only these are range-checked
    for key, value in args.items():
        if key in MANAGED_ARGS:
            problems.append((key, MANAGED_ARGS[key]))
            continue
        spec = known.get(key)
        if spec is None and key in GONE_ARGS:
            problems.append((key, f"unknown key: {GONE_ARGS[key]}"))
            continue
        if spec is None:
            hint = closest(key, list(known))
            extra = f" (did you mean {hint}?)" if hint else f" ({config_class(method)} has no such field)"
            problems.append((key, f"unknown key{extra}"))
            continue
        if not _type_ok(value, spec):
            got = f"expected {_kind_words(spec)}, got {value!r} ({type(value).__name__})"
            problems.append((key, got + _type_hint(key, value, spec)))
            continue
        choices = spec["choices"]
        if choices and isinstance(value, str) and value not in choices and "bool" not in spec["kinds"]:
            hint = closest(value, [str(c) for c in choices])
            tail = f"did you mean {hint!r}?" if hint else "one of " + ", ".join(map(str, choices))
            problems.append((key, f"{value!r} is not a valid choice; {tail}"))
            continue
        typed[key] = value
    defaults = {k: spec["default"] for k, spec in known.items()}
    return problems + arg_ranges.check(method, typed, defaults)


def _type_hint(key: str, value: Any, spec: dict[str, Any]) -> str:
    """What to write instead, when the value is a number in the wrong clothes: a quoted `"5e-4"` (a string to YAML),
    or `1e3` for an integer field (a float to YAML)."""
    kinds = set(spec["kinds"])
    if isinstance(value, str) and kinds & {"int", "float"}:
        try:
            number = float(value)
        except ValueError:
            return ""
        if "float" in kinds or number.is_integer():
            shown = value if "float" in kinds else str(int(number))
            return f"; the quotes make it text: write {key}: {shown}"
    if isinstance(value, float) and "int" in kinds and "float" not in kinds and value.is_integer():
        return f"; write {key}: {int(value)}"
    return ""
