"""The recipe schema. Field descriptions here are the documentation: docs/recipes.md is generated from them.

Sections are nested by concern and each validates itself; later capabilities (evaluation, registry, tracking,
cost) add optional sections, so recipes written today keep validating.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, never silently dropped."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelRef(Section):
    """Which model to start from. A plain string is shorthand for `{name: ...}`."""

    name: str = Field(
        description="A built-in model name (`smollm2-135m-instruct`), a local directory with a Hugging Face "
        "checkpoint, or a hub id (`org/model`)."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a hub id.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype when loading. `auto` keeps the checkpoint's dtype (float32 on CPU)."
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3"] | None = Field(
        None, description="Attention kernel; unset lets transformers choose (sdpa where available)."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub repository to run.")
    chat_template: str | None = Field(
        None, description="Path to a Jinja chat template that replaces the tokenizer's own."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class Format(Section):
    """How rows become TRL training examples: chat `prompt`/`completion` turns, plain text, or `messages`."""

    style: Literal["chat", "plain"] = Field(
        "chat",
        description="`chat` wraps prompt and completion in user/assistant turns rendered by the tokenizer's chat "
        "template; `plain` trains on the strings as they are.",
    )
    prompt: str | None = Field(
        None, description="Template for the prompt, with `{column}` placeholders, e.g. `Summarise: {text}`."
    )
    completion: str | None = Field(None, description="Template for the completion, e.g. `{summary}`.")
    system: str | None = Field(None, description="System prompt put before every chat prompt (chat style only).")
    messages: str | None = Field(
        None, description="Name of a column that already holds chat messages (list of {role, content})."
    )

    @model_validator(mode="after")
    def _one_shape(self) -> Format:
        if self.messages and (self.prompt or self.completion):
            raise ValueError("give either `messages` or `prompt`/`completion` templates, not both")
        if bool(self.prompt) != bool(self.completion) and not self.messages:
            raise ValueError("`prompt` and `completion` templates go together; give both")
        return self


class Data(Section):
    """Where training and evaluation rows come from."""

    source: str | dict[str, str] = Field(
        description="A built-in dataset (`debian-descriptions`), a local JSONL/JSON/CSV/Parquet file or "
        "directory, a hub dataset id (`org/name`), or a mapping of split name to local file."
    )
    task: str | None = Field(
        None, description="Task of a built-in dataset (`synopsis` or `section` for `debian-descriptions`)."
    )
    subset: str | None = Field(None, description="Hub dataset configuration name.")
    revision: str | None = Field(None, description="Hub dataset revision.")
    train_split: str = Field("train", description="Split to train on.")
    eval_split: str | None = Field(
        "validation", description="Split for evaluation loss during and after training; null for none."
    )
    max_train_rows: int | None = Field(None, gt=0, description="Use only the first N training rows.")
    max_eval_rows: int | None = Field(None, gt=0, description="Use only the first N evaluation rows.")
    format: Format | None = Field(
        None,
        description="Column mapping into TRL's formats. Built-in tasks bring their own; without one, rows "
        "must already have `messages`, `prompt`/`completion`, or `text` columns.",
    )
    prepare: list[Step] = Field(
        default_factory=list,
        description="Ordered preparation steps (`dedup`, `filter`, `decontaminate`, `mix`, `sample`, `split`), "
        "run before formatting and cached by fingerprint; see docs/data.md.",
    )


class Peft(Section):
    """Parameter-efficient fine-tuning. Without a `peft` block the stage trains every weight."""

    type: Literal["lora", "qlora"] = Field(
        "lora",
        description="`lora` adapters on full-precision weights; `qlora` adds 4-bit NF4 base weights "
        "(bitsandbytes, CUDA only).",
    )
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA alpha (scaling is alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters: `all-linear` or a list of module names."
    )
    modules_to_save: list[str] | None = Field(
        None, description="Modules trained in full next to the adapters (e.g. `lm_head` for new tokens)."
    )
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scaling (alpha / sqrt(r)).")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="QLoRA only: 4-bit data type.")
    bnb_4bit_use_double_quant: bool = Field(True, description="QLoRA only: quantise the quantisation constants.")


class Stage(Section):
    """One training step of the recipe; stages run in order, each starting from the previous one's model."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Stage name, unique in the recipe; `--set stages.NAME.args.x=...` addresses it.",
    )
    method: str = Field(description="Training method. Available: `sft` (TRL SFTTrainer).")
    peft: Peft | None = Field(None, description="Adapter training; omit for full fine-tuning.")
    data: Data | None = Field(None, description="Data for this stage only; defaults to the recipe's `data`.")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Arguments of the method's TRL config (`SFTConfig` for `sft`), checked field by field. "
        "tuneloop sets `output_dir`, and turns `bf16` off where no GPU supports it.",
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from tuneloop.config.trainer_fields import closest, methods

        if value not in methods():
            hint = closest(value, methods())
            did = f"did you mean {hint}? " if hint else ""
            raise ValueError(f"unknown method {value!r}; {did}available: {', '.join(methods())}")
        return value


class Cost(Section):
    """How runs are priced: a device from the price table (detected by default) or an explicit price."""

    device: str = Field(
        "auto",
        description="Price-table device (`h100`, `a100-80gb`, `l4`, `cpu-2`, ...); `auto` detects the GPU by name, "
        "or the CPU instance by core count.",
    )
    price_per_hour: float | None = Field(
        None, ge=0, description="Price of one device-hour, overriding the table's (e.g. your negotiated rate)."
    )
    prices: str | None = Field(
        None, description="Another price table (default `configs/cost/prices.yaml`, which is meant to be edited)."
    )


class Recipe(Section):
    """A recipe: what to train, on what, and how. The unit of work in tuneloop."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Recipe name: lower-case letters, digits, `.`, `_`, `-`. Names the run directory.",
    )
    description: str | None = Field(None, description="What the recipe is for, in a sentence.")
    defaults: list[str] = Field(
        default_factory=list,
        description="Other YAML files merged underneath this one, in order (e.g. `models/smollm2-135m`, looked "
        "up next to the recipe, then under `configs/`). Mappings merge key by key; stages merge by name.",
    )
    seed: int = Field(42, description="Seed for data shuffling, weight initialisation and training.")
    base_model: ModelRef = Field(description="Model the first stage starts from.")
    data: Data | None = Field(None, description="Data for every stage that has no `data` of its own.")
    stages: list[Stage] = Field(min_length=1, description="Training stages, run in order.")
    cost: Cost = Field(default_factory=Cost, description="How the run is priced (device-hours × price).")
    evaluation: Evaluation | None = Field(
        None,
        description="How the trained model is judged: `tuneloop run` evaluates the baseline and the trained model "
        "on these tasks and applies the gate.",
    )
    tracking: Tracking = Field(
        default_factory=lambda: Tracking(), description="Where the run is tracked (MLflow, W&B)."
    )
    registry: Registry | None = Field(
        None, description="Register the trained model (MLflow Model Registry) when the run succeeds."
    )

    @model_validator(mode="after")
    def _stage_names_unique(self) -> Recipe:
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dupes)}")
        if self.registry is not None and not self.tracking.mlflow:
            raise ValueError("`registry` needs MLflow tracking: remove `tracking.mlflow: false` or the registry")
        self._fill_decontamination()
        return self

    def _fill_decontamination(self) -> None:
        """`decontaminate` without `against` compares with what this recipe evaluates on: the data's eval split
        and every evaluation task's rows. Filled in here so the resolved recipe says exactly what was used."""
        from tuneloop.config.prepare import Against, Decontaminate, Filter

        sections = [d for d in [self.data, *(s.data for s in self.stages)] if d is not None]
        for data in sections:
            for step in data.prepare:
                counts_tokens = isinstance(step, Filter) and (step.min_tokens, step.max_tokens) != (None, None)
                if counts_tokens and step.tokenizer is None:
                    step.tokenizer = self.base_model.name
                if not isinstance(step, Decontaminate) or step.against is not None:
                    continue
                against: list[Against] = []
                if data.eval_split:
                    against.append(Against(split=data.eval_split))
                for task in self.evaluation.tasks if self.evaluation else []:
                    other = task.data if task.data is not None and task.data != data else None
                    ref = Against(split=task.split, data=other)
                    if ref not in against:
                        against.append(ref)
                step.against = against

    def promotion_gate(self) -> list[GateRule]:
        """The rules a version must pass against the champion: `registry.gate`, else the evaluation's gate."""
        if self.registry is not None and self.registry.gate:
            return list(self.registry.gate)
        return list(self.evaluation.gate) if self.evaluation else []

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def stage_data(self, stage: Stage) -> Data:
        data = stage.data or self.data
        assert data is not None, "validated by load_recipe"
        return data


from tuneloop.config.evaluation import Evaluation, GateRule  # noqa: E402  (builds on the sections above)
from tuneloop.config.lifecycle import Registry, Tracking  # noqa: E402
from tuneloop.config.prepare import Step  # noqa: E402

Data.model_rebuild()
Recipe.model_rebuild()


def template_fields(template: str) -> list[str]:
    """Column names a `{column}` template refers to."""
    import string

    names = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None:
            names.append(re.split(r"[.\[!:]", field, maxsplit=1)[0])
    return names
