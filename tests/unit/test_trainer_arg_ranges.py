"""Trainer argument values that transformers, TRL or torch reject at train time fail `tuneloop validate` instead,
as `file:line key: value, range, why`; the values the table lets through are really accepted by the libraries."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import arg_ranges, trainer_fields

DATA = {
    "sft": "{source: debian-descriptions, task: synopsis}",
    "dpo": "{source: debian-synopsis-pairs, task: preference}",
    "grpo": "{source: debian-descriptions, task: synopsis}",
}
EXTRA = {"grpo": "    rewards: [{builtin: debian_synopsis_rules}]\n"}


def recipe(method: str, args: str) -> str:
    """A recipe whose one stage (named after its method) ends with `args:`, one argument per line."""
    lines = "".join(f"      {a.strip()}\n" for a in args.split(";"))
    return (
        f"name: ranges\nbase_model: smollm2-135m-instruct\ndata: {DATA[method]}\nstages:\n"
        f"  - name: {method}\n    method: {method}\n{EXTRA.get(method, '')}    args:\n{lines}"
    )


def validate(write, method: str, args: str):
    path = write("r.yaml", recipe(method, args))
    return path, CliRunner().invoke(app, ["validate", str(path)])


BAD = [
    ("sft", "learning_rate: -5.0e-4", "learning_rate", "-0.0005 must be >= 0 (the optimizer rejects a negative rate"),
    ("sft", "learning_rate: .inf", "learning_rate", "inf must be a finite number >= 0"),
    ("sft", "learning_rate: .nan", "learning_rate", "nan must be a finite number >= 0"),
    ("sft", "num_train_epochs: 0", "num_train_epochs", "0 must be > 0 (zero epochs train nothing)"),
    ("sft", "max_steps: 0", "max_steps", "0 must be > 0, or -1 to train for num_train_epochs"),
    ("sft", "max_steps: -5", "max_steps", "-5 must be > 0, or -1"),
    ("sft", "per_device_train_batch_size: 0", "per_device_train_batch_size", "0 must be >= 1 (a batch holds"),
    ("sft", "per_device_eval_batch_size: -1", "per_device_eval_batch_size", "-1 must be >= 1"),
    ("sft", "gradient_accumulation_steps: 0", "gradient_accumulation_steps", "0 must be >= 1 (the trainer divides"),
    ("sft", "warmup_steps: -0.1", "warmup_steps", "-0.1 must be >= 0 (transformers rejects a negative warmup"),
    ("sft", "weight_decay: -0.01", "weight_decay", "-0.01 must be >= 0 (the optimizer rejects it)"),
    ("sft", "max_grad_norm: -1.0", "max_grad_norm", "-1.0 must be >= 0"),
    ("sft", "adam_beta1: 1.0", "adam_beta1", "1.0 must be in [0, 1) (the optimizer rejects it)"),
    ("sft", "adam_beta2: -0.5", "adam_beta2", "-0.5 must be in [0, 1)"),
    ("sft", "adam_epsilon: 0", "adam_epsilon", "0 must be > 0"),
    ("sft", "logging_steps: 0", "logging_steps", "0 must be a whole number of steps >= 1, or a fraction in (0, 1)"),
    ("sft", "logging_steps: 2.5", "logging_steps", "2.5 must be a whole number of steps >= 1"),
    ("sft", "eval_steps: -10", "eval_steps", "-10 must be a whole number"),
    ("sft", "save_steps: 1.5", "save_steps", "1.5 must be a whole number"),
    ("sft", "max_length: 0", "max_length", "0 must be >= 1"),
    ("sft", "dataloader_num_workers: -2", "dataloader_num_workers", "-2 must be >= 0 (torch's DataLoader rejects it)"),
    ("sft", "torch_empty_cache_steps: 0", "torch_empty_cache_steps", "0 must be >= 1 (transformers rejects it)"),
    (
        "sft",
        "lr_scheduler_type: cosine_warmup",
        "lr_scheduler_type",
        "'cosine_warmup' is not a valid choice; did you mean",
    ),
    ("sft", "optim: adamw", "optim", "'adamw' is not a valid choice; did you mean"),
    ("sft", "eval_strategy: step", "eval_strategy", "'step' is not a valid choice; did you mean 'steps'?"),
    ("sft", "save_strategy: epochs", "save_strategy", "'epochs' is not a valid choice; did you mean 'epoch'?"),
    (
        "sft",
        'learning_rate: "5e-4"',
        "learning_rate",
        "expected a number, got '5e-4' (str); the quotes make it text: write learning_rate: 5e-4",
    ),
    ("sft", "max_steps: 1e3", "max_steps", "expected an integer, got 1000.0 (float); write max_steps: 1000"),
    ("sft", "warmup_ratio: 0.1", "warmup_ratio", "unknown key: transformers 5 removed it: `warmup_steps` takes a"),
    ("dpo", "max_prompt_length: 512", "max_prompt_length", "unknown key: TRL 1.x removed it from its trainers"),
    ("sft", "bf16: true; fp16: true", "bf16", "bf16 and fp16 are both on; transformers takes one"),
    (
        "sft",
        "lr_scheduler_type: reduce_lr_on_plateau",
        "lr_scheduler_type",
        "reduce_lr_on_plateau and greedy read an evaluation metric",
    ),
    ("dpo", "beta: 0", "beta", "0 must be > 0 (beta scales the preference margin"),
    ("dpo", "beta: -0.1", "beta", "-0.1 must be > 0"),
    ("grpo", "beta: -0.04", "beta", "-0.04 must be >= 0 (beta weighs the KL penalty"),
    ("grpo", "num_generations: 1", "num_generations", "1 must be >= 2 (GRPO and RLOO compare each prompt's samples"),
    ("grpo", "max_completion_length: 0", "max_completion_length", "0 must be >= 1"),
    ("grpo", "temperature: 0", "temperature", "0 must be > 0 (sampling divides the logits by it"),
    ("grpo", "top_p: 1.5", "top_p", "1.5 must be in (0, 1]"),
    (
        "grpo",
        "generation_batch_size: 8; steps_per_generation: 2",
        "steps_per_generation",
        "set generation_batch_size or steps_per_generation, not both",
    ),
    ("grpo", "auto_find_batch_size: true", "auto_find_batch_size", "TRL refuses it for GRPO and RLOO"),
]


@pytest.mark.parametrize(("method", "args", "key", "message"), BAD, ids=[f"{m}-{a}" for m, a, _, _ in BAD])
def test_out_of_range_trainer_arg_fails_validate_with_line_and_reason(write, method, args, key, message):
    path, result = validate(write, method, args)
    lines = recipe(method, args).splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.strip().startswith(f"{key}:"))
    assert result.exit_code == 2, result.output
    assert f"{path}:{line} stages.{method}.args.{key}: {message}" in result.output
    assert "Traceback" not in result.output


GOOD = [
    ("sft", "learning_rate: 5e-4; max_steps: -1; warmup_steps: 0; logging_steps: 0.1; save_steps: 500"),
    ("sft", "eval_steps: 0.25; warmup_steps: 0.1; max_grad_norm: 0; weight_decay: 0; adam_beta1: 0"),
    ("sft", "logging_steps: 1; save_steps: 1.0; max_steps: 1; num_train_epochs: 0.5; adam_beta2: 0.999"),
    ("sft", "lr_scheduler_type: cosine_with_min_lr; optim: adamw_torch; eval_strategy: epoch; save_strategy: best"),
    ("sft", "lr_scheduler_type: reduce_lr_on_plateau; eval_strategy: steps"),
    ("sft", "learning_rate: 0"),  # quickstart's challenger the promotion gate must refuse
    ("dpo", "beta: 0.01; max_length: 1; learning_rate: 1.0e-6"),
    ("grpo", "beta: 0; num_generations: 2; per_device_train_batch_size: 2; top_p: 1.0; temperature: 0.7"),
]


@pytest.mark.parametrize(("method", "args"), GOOD)
def test_edge_values_in_range_pass_validate(write, method, args):
    _, result = validate(write, method, args)
    assert result.exit_code == 0, result.output


def test_arguments_said_to_be_gone_are_gone_from_every_method():
    for key in trainer_fields.GONE_ARGS:
        assert not any(key in trainer_fields.fields(m) for m in trainer_fields.methods()), key


def test_every_rule_names_a_field_some_method_has():
    for key, rule in arg_ranges.RULES.items():
        owners = [m for m in trainer_fields.methods() if key in trainer_fields.fields(m)]
        assert owners, f"{key}: no TRL config of a tuneloop method has it (renamed or removed upstream?)"
        for method in rule if isinstance(rule, dict) else []:
            assert key in trainer_fields.fields(method), f"{key} ({method})"
    for c in arg_ranges.TOGETHER:
        for key in c.keys:
            assert any(key in trainer_fields.fields(m) for m in trainer_fields.methods()), key


# The edges each rule lets through (lowest, highest): every rule needs its pair here, and the libraries must take both.
EDGES: dict[str, tuple] = {
    "learning_rate": (0.0, 10.0),
    "num_train_epochs": (1e-3, 100.0),
    "max_steps": (-1, 1),
    "per_device_train_batch_size": (2, 64),  # 2, not 1: GRPO's generation batch must hold num_generations=2
    "per_device_eval_batch_size": (1, 64),
    "gradient_accumulation_steps": (1, 64),
    "eval_accumulation_steps": (1, 64),
    "warmup_steps": (0, 0.999),
    "weight_decay": (0.0, 10.0),
    "max_grad_norm": (0.0, 1e6),
    "adam_beta1": (0.0, 0.999999),
    "adam_beta2": (0.0, 0.999999),
    "adam_epsilon": (1e-30, 1.0),
    "logging_steps": (1e-6, 1),
    "eval_steps": (0.999, 1000),
    "save_steps": (1e-6, 1000.0),
    "torch_empty_cache_steps": (1, 1000),
    "dataloader_num_workers": (0, 4),
    "max_length": (1, 1 << 20),
    "max_completion_length": (1, 1 << 20),
    "num_generations": (2, 2),
    "num_generations_eval": (1, 64),
    "num_iterations": (1, 8),
    "beta": {"dpo": (1e-9, 100.0), "grpo": (0.0, 100.0), "distill": (0.0, 1.0)},
    "temperature": (1e-6, 10.0),
    "top_p": (1e-6, 1.0),
}


def test_every_rule_has_edges_the_rule_accepts():
    assert set(EDGES) == set(arg_ranges.RULES)
    for method in ("sft", "dpo", "grpo", "distill"):
        for end in (0, 1):
            args = edges(method, end)
            assert arg_ranges.check(method, args, {}) == [], (method, end)


def edges(method: str, end: int) -> dict:
    known = trainer_fields.fields(method)
    out = {}
    for key, pair in EDGES.items():
        if key in known:
            pair = pair.get(method) if isinstance(pair, dict) else pair
            if pair is not None:
                out[key] = pair[end]
    return out


@pytest.mark.parametrize("method", ["sft", "dpo", "grpo", "distill"])
def test_libraries_accept_the_edges_the_table_lets_through(tmp_path, method):
    """The table must not refuse what works, nor drift from the libraries: build the real TRL config (and the
    torch optimizer it feeds) at both ends of every range."""
    import torch

    cls = trainer_fields.import_config(trainer_fields.CONFIG_CLASSES[method])
    for end in (0, 1):
        args = edges(method, end)
        config = cls(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **args)
        assert config.learning_rate == args["learning_rate"]
        param = torch.nn.Parameter(torch.zeros(1))
        betas = (config.adam_beta1, config.adam_beta2)
        torch.optim.AdamW([param], config.learning_rate, betas, config.adam_epsilon, config.weight_decay)


@pytest.mark.parametrize(
    ("method", "key", "value"),
    [
        ("sft", "logging_steps", 2.5),
        ("sft", "warmup_steps", -1),
        ("sft", "torch_empty_cache_steps", 0),
        ("distill", "beta", 1.5),
        ("grpo", "num_generations", 1),
        ("sft", "learning_rate", -1e-4),
        ("sft", "adam_beta1", 1.0),
        ("sft", "adam_epsilon", -1e-8),
        ("sft", "weight_decay", -0.1),
    ],
)
def test_values_the_table_refuses_the_libraries_refuse_too(tmp_path, method, key, value):
    """Where the table says a library rejects a value, it does (the rest are refused because they train nothing)."""
    import torch

    assert arg_ranges.check(method, {key: value}, {})
    cls = trainer_fields.import_config(trainer_fields.CONFIG_CLASSES[method])
    extra = {"num_generations": 2, "per_device_train_batch_size": 2} if method == "grpo" else {}
    with pytest.raises(ValueError):
        config = cls(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **{**extra, key: value})
        betas = (config.adam_beta1, config.adam_beta2)
        param = torch.nn.Parameter(torch.zeros(1))
        torch.optim.AdamW([param], config.learning_rate, betas, config.adam_epsilon, config.weight_decay)
