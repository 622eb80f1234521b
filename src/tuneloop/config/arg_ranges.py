"""The values of trainer arguments that transformers, TRL or torch reject at train time, checked at validate time.

`trainer_fields` checks names and types from a snapshot of the TRL config classes; a type is not enough:
`learning_rate: -5.0e-4` is a float, and passes, and the optimizer dies with `ValueError: Invalid learning rate`
only after the model and the data have loaded. The rules below mirror what `TrainingArguments.__post_init__`,
the TRL configs' `__post_init__` and torch's optimizers reject (or what is certainly a mistake: zero epochs
train nothing), each with the reason said to the user. One table, read by `check` and by the generated
docs; a unit test builds the real config classes with the edge values each rule lets through, so the table
cannot drift from the libraries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bound:
    """A range a number must fall in, and how a message says it ("> 0", "in [0, 1)")."""

    test: Callable[[float], bool]
    says: str


def above(low: float) -> Bound:
    return Bound(lambda v: v > low, f"> {low:g}")


def at_least(low: float) -> Bound:
    return Bound(lambda v: v >= low, f">= {low:g}")


def within(low: float, high: float, *, high_open: bool = False) -> Bound:
    if high_open:
        return Bound(lambda v: low <= v < high, f"in [{low:g}, {high:g})")
    return Bound(lambda v: low <= v <= high, f"in [{low:g}, {high:g}]")


# transformers reads an interval below 1 as a fraction of the total steps, and rejects a non-whole one above 1.
INTERVAL = Bound(
    lambda v: 0 < v < 1 or (v >= 1 and v == int(v)),
    "a whole number of steps >= 1, or a fraction in (0, 1) of the total steps",
)
MAX_STEPS = Bound(lambda v: v >= 1 or v == -1, "> 0, or -1 to train for num_train_epochs")


@dataclass(frozen=True)
class Rule:
    """One numeric argument's range and why: the reason is the end of the message."""

    bound: Bound
    why: str


OPTIMIZER = "the optimizer rejects it"
INTERVAL_WHY = "transformers rejects a zero, negative or fractional interval above 1"
BATCH = "a batch holds at least one example"
MARGIN = "beta scales the preference margin: 0 gives no gradient, below 0 prefers the rejected"
KL = "beta weighs the KL penalty; below 0 rewards drifting from the reference"

# field -> rule, or method -> rule where the field means different things per method (`beta`). A field listed
# here that no method of trainer_fields.CONFIG_CLASSES has fails a unit test.
RULES: dict[str, Rule | dict[str, Rule]] = {
    # 0 stays allowed: it leaves the weights as they start, which quickstart.yaml uses for a challenger the
    # promotion gate must refuse (`--set stages.sft.args.learning_rate=0`).
    "learning_rate": Rule(at_least(0), "the optimizer rejects a negative rate; 0 leaves the weights as they start"),
    "num_train_epochs": Rule(above(0), "zero epochs train nothing"),
    "max_steps": Rule(MAX_STEPS, "0 or a negative count trains nothing"),
    "per_device_train_batch_size": Rule(at_least(1), BATCH),
    "per_device_eval_batch_size": Rule(at_least(1), BATCH),
    "gradient_accumulation_steps": Rule(at_least(1), "the trainer divides by it"),
    "eval_accumulation_steps": Rule(at_least(1), "the trainer divides by it"),
    "warmup_steps": Rule(at_least(0), "transformers rejects a negative warmup; below 1 it is a fraction of the steps"),
    "weight_decay": Rule(at_least(0), OPTIMIZER),
    "max_grad_norm": Rule(at_least(0), "a norm is never negative; 0 turns clipping off"),
    "adam_beta1": Rule(within(0, 1, high_open=True), OPTIMIZER),
    "adam_beta2": Rule(within(0, 1, high_open=True), OPTIMIZER),
    "adam_epsilon": Rule(above(0), "it keeps the update's division away from zero; torch rejects a negative one"),
    "logging_steps": Rule(INTERVAL, INTERVAL_WHY),
    "eval_steps": Rule(INTERVAL, INTERVAL_WHY),
    "save_steps": Rule(INTERVAL, INTERVAL_WHY),
    "torch_empty_cache_steps": Rule(at_least(1), "transformers rejects it"),
    "dataloader_num_workers": Rule(at_least(0), "torch's DataLoader rejects it"),
    "max_length": Rule(at_least(1), "no sequence fits in fewer than one token"),
    "max_completion_length": Rule(at_least(1), "no completion fits in fewer than one token"),
    "num_generations": Rule(at_least(2), "GRPO and RLOO compare each prompt's samples with each other; TRL rejects 1"),
    "num_generations_eval": Rule(at_least(1), "each evaluation prompt needs a sample"),
    "num_iterations": Rule(at_least(1), "each generation batch is trained on at least once"),
    "beta": {
        "dpo": Rule(above(0), MARGIN),
        "kto": Rule(above(0), MARGIN),
        "cpo": Rule(above(0), MARGIN),
        "orpo": Rule(at_least(0), "beta weighs the odds-ratio term; below 0 rewards the rejected answer"),
        "grpo": Rule(at_least(0), KL),
        "rloo": Rule(at_least(0), KL),
        "distill": Rule(within(0, 1), "it mixes forward and reverse KL; TRL rejects other values"),
    },
    "temperature": Rule(above(0), "sampling divides the logits by it; 0 would make a prompt's samples identical"),
    "top_p": Rule(
        Bound(lambda v: 0 < v <= 1, "in (0, 1]"), "it is a probability mass; 0 samples greedily, every sample alike"
    ),
}


@dataclass(frozen=True)
class Together:
    """A constraint between arguments (or on a non-numeric one) that a library rejects at train time."""

    keys: tuple[str, ...]  # the message points at the first of these the stage sets
    methods: frozenset[str] | None  # None: every method
    broken: Callable[[Callable[[str], Any]], bool]  # given a lookup of the argument values (defaults filled in)
    message: str


NEEDS_EVAL = (
    "reduce_lr_on_plateau and greedy read an evaluation metric, and transformers refuses them without one: "
    "set eval_strategy: steps (or epoch) and give the stage eval data"
)
ONLINE = frozenset({"grpo", "rloo"})

TOGETHER: tuple[Together, ...] = (
    Together(
        ("bf16", "fp16"),
        None,
        lambda a: bool(a("bf16")) and bool(a("fp16")),
        "bf16 and fp16 are both on; transformers takes one",
    ),
    Together(
        ("lr_scheduler_type", "eval_strategy"),
        None,
        lambda a: a("lr_scheduler_type") in ("reduce_lr_on_plateau", "greedy") and a("eval_strategy") == "no",
        NEEDS_EVAL,
    ),
    Together(
        ("dataloader_prefetch_factor", "dataloader_num_workers"),
        None,
        lambda a: a("dataloader_prefetch_factor") is not None and not a("dataloader_num_workers"),
        "prefetching needs worker processes: set dataloader_num_workers >= 1, or remove it",
    ),
    Together(
        ("steps_per_generation", "generation_batch_size"),
        ONLINE,
        lambda a: a("generation_batch_size") is not None and a("steps_per_generation") is not None,
        "set generation_batch_size or steps_per_generation, not both: TRL derives one from the other",
    ),
    Together(
        ("auto_find_batch_size",),
        ONLINE,
        lambda a: bool(a("auto_find_batch_size")),
        "TRL refuses it for GRPO and RLOO: shrinking the batch on out-of-memory splits prompt groups; "
        "lower per_device_train_batch_size instead",
    ),
    Together(
        ("vllm_importance_sampling_clip_min", "vllm_importance_sampling_clip_max"),
        frozenset({"grpo"}),
        lambda a: (
            _number(a("vllm_importance_sampling_clip_min"))
            and _number(a("vllm_importance_sampling_clip_max"))
            and a("vllm_importance_sampling_clip_min") >= a("vllm_importance_sampling_clip_max")
        ),
        "must be below vllm_importance_sampling_clip_max (TRL rejects it)",
    ),
    Together(
        ("loss_weights", "loss_type"),
        frozenset({"dpo"}),
        lambda a: isinstance(a("loss_weights"), list) and len(a("loss_weights")) != len(_as_list(a("loss_type"))),
        "needs one weight per loss_type entry (TRL rejects other lengths)",
    ),
)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def rule_for(method: str, key: str) -> Rule | None:
    rule = RULES.get(key)
    return rule.get(method) if isinstance(rule, dict) else rule


def check(method: str, args: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, problem) for each argument out of its range and each broken constraint between arguments.

    `args` hold only arguments whose names and types already passed; `defaults` fill in the ones not set."""
    problems: list[tuple[str, str]] = []
    for key, value in args.items():
        rule = rule_for(method, key)
        if rule is None or not _number(value):
            continue
        if not math.isfinite(value):
            problems.append((key, f"{value!r} must be a finite number {rule.bound.says} ({rule.why})"))
        elif not rule.bound.test(value):
            problems.append((key, f"{value!r} must be {rule.bound.says} ({rule.why})"))

    def lookup(key: str) -> Any:
        return args[key] if key in args else defaults.get(key)

    for c in TOGETHER:
        shown = next((k for k in c.keys if k in args), None)
        if shown is not None and (c.methods is None or method in c.methods) and c.broken(lookup):
            problems.append((shown, c.message))
    return problems


def reference() -> list[str]:
    """The tables as Markdown lines for docs/recipes.md (the rules are written once, here)."""
    lines = ["| argument | allowed | why |", "|---|---|---|"]
    for key, rule in RULES.items():
        per_method = rule if isinstance(rule, dict) else {"": rule}
        for method, r in per_method.items():
            shown = f"`{key}` ({method})" if method else f"`{key}`"
            lines.append(f"| {shown} | {r.bound.says} | {r.why} |")
    lines += ["", "| arguments | methods | refused when |", "|---|---|---|"]
    for c in TOGETHER:
        names = ", ".join(f"`{k}`" for k in c.keys)
        lines.append(f"| {names} | {', '.join(sorted(c.methods)) if c.methods else 'all'} | {c.message} |")
    return lines
