"""The recipe schema. Field descriptions here are the documentation: docs/recipes.md is generated from them.

Sections are nested by concern and each validates itself; later capabilities (evaluation, registry, tracking,
cost) add optional sections, so recipes written today keep validating.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from tuneloop.config.errors import AtKey
from tuneloop.config.trainer_fields import EXPERIMENTAL, REMOVED, closest, methods

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
    """How rows become TRL training examples: chat `prompt`/`completion` turns, preference pairs (`chosen`/
    `rejected`), unpaired preferences (`completion` + `label`), prompts only, plain text, or `messages`."""

    style: Literal["chat", "plain"] = Field(
        "chat",
        description="`chat` wraps prompt and completion in user/assistant turns rendered by the tokenizer's chat "
        "template; `plain` trains on the strings as they are.",
    )
    prompt: str | None = Field(
        None, description="Template for the prompt, with `{column}` placeholders, e.g. `Summarise: {text}`."
    )
    completion: str | None = Field(
        None,
        description="Template for the completion, e.g. `{summary}`. For `grpo`/`rloo` it is the reference answer "
        "that reward functions such as `rougeL` compare with.",
    )
    chosen: str | None = Field(
        None, description="Preference methods (`reward`, `dpo`, `orpo`, `cpo`): template of the preferred answer."
    )
    rejected: str | None = Field(None, description="Preference methods: template of the dispreferred answer.")
    label: str | None = Field(
        None,
        description="`kto`: name of the column that says whether the completion is desirable (true/false, 1/0, "
        "or `good`/`bad`, `up`/`down`).",
    )
    system: str | None = Field(None, description="System prompt put before every chat prompt (chat style only).")
    messages: str | None = Field(
        None, description="Name of a column that already holds chat messages (list of {role, content})."
    )

    @model_validator(mode="after")
    def _one_shape(self) -> Format:
        if self.messages and (self.prompt or self.completion or self.chosen or self.rejected):
            raise ValueError("give either `messages` or `prompt`/`completion` templates, not both")
        if bool(self.chosen) != bool(self.rejected):
            raise ValueError("`chosen` and `rejected` templates go together; give both")
        if (self.completion or self.chosen) and not self.prompt:
            raise ValueError("a `prompt` template is needed with `completion` or `chosen`/`rejected`")
        if self.label and not self.completion:
            raise ValueError("`label` marks a `completion` as desirable or not; give a `completion` template too")
        return self

    def shape(self) -> str:
        """Which TRL dataset type these templates produce: messages, pairs, unpaired, prompt_completion, prompt."""
        if self.messages:
            return "messages"
        if self.chosen:
            return "pairs"
        if self.label:
            return "unpaired"
        return "prompt_completion" if self.completion else "prompt"


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

    @model_serializer(mode="wrap")
    def _resolved(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        """In a resolved recipe (`context={"resolved": True}`), `eval_split` reads back as it ran: left out while it
        is the default (used only where the source has that split), kept as null when the recipe turned it off."""
        out = handler(self)
        if (info.context or {}).get("resolved"):
            if "eval_split" not in self.model_fields_set:
                out.pop("eval_split", None)
            elif self.eval_split is None:
                out["eval_split"] = None
        return out


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


# the `rewards: [{builtin: NAME}]` values, with what each needs from the data; tuneloop.rewards.build_builtin makes them
BUILTIN_REWARDS: dict[str, str] = {
    "debian_synopsis_rules": "Debian's synopsis rules (Policy 3.4.1, Developer's Reference 6.2.2); uses `package`",
    "rougeL": "ROUGE-L F against the reference column",
    "length": "brevity: 1 up to max_chars, 0 from twice that",
}


class Reward(Section):
    """One reward of a `grpo`/`rloo` stage: a built-in function, your own function, or a reward model.

    The stage's rewards are combined with their weights (TRL's `reward_weights`)."""

    builtin: str | None = Field(
        None,
        description="A built-in reward: `debian_synopsis_rules` (share of Debian's synopsis rules followed), "
        "`rougeL` (ROUGE-L F against the reference), `length` (1 up to `max_chars`, falling to 0 at twice that).",
    )
    function: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="Your reward function as `package.module:function`, called as TRL calls reward functions: "
        "`f(prompts, completions, completion_ids, **columns) -> list[float | None]`.",
    )
    model: str | None = Field(
        None,
        description="A reward model (sequence classifier, e.g. trained by a `reward` stage): local directory, hub "
        "id, or `models:/NAME@ALIAS`.",
    )
    weight: float = Field(1.0, description="Weight of this reward in the sum.")
    reference: str | None = Field(
        None,
        description="`rougeL`: the column holding the reference text; defaults to the column the format's "
        "`completion` template names.",
    )
    max_chars: int = Field(80, gt=0, description="`length`: characters allowed before the reward falls.")

    @model_validator(mode="after")
    def _one_kind(self) -> Reward:
        given = [k for k in ("builtin", "function", "model") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of `builtin`, `function` or `model`")
        if self.builtin and self.builtin not in BUILTIN_REWARDS:
            hint = closest(self.builtin, list(BUILTIN_REWARDS))
            did = f"did you mean {hint}? " if hint else ""
            raise ValueError(f"unknown built-in reward {self.builtin!r}; {did}built-ins: {', '.join(BUILTIN_REWARDS)}")
        return self

    def label(self) -> str:
        return self.builtin or self.function or f"model:{self.model}"


PREFERENCE_METHODS = ("reward", "dpo", "orpo", "cpo")
ONLINE_METHODS = ("grpo", "rloo")
REFERENCE_METHODS = ("dpo", "kto")
KEEP_EVERY = re.compile(r"^every_([2-9]|[1-9]\d+)$")


class Student(Section):
    """The model a `distill` stage trains to imitate its teacher."""

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    from_: str = Field(
        "teacher",
        alias="from",
        description="`teacher` (start from the teacher's own weights, usually with `keep_layers`), or any model "
        "reference with the teacher's vocabulary (built-in name, directory, hub id, `models:/NAME@ALIAS`).",
    )
    keep_layers: str | list[int] | None = Field(
        None,
        description="With `from: teacher`: the decoder layers the student keeps, as DistilBERT and Minitron "
        "initialise students. `every_2` keeps half of them evenly spaced, first and last included (`every_3` a "
        "third, ...); a list keeps those indices (0-based). Omitted: all layers (same-size student).",
    )

    @field_validator("keep_layers")
    @classmethod
    def _keep_layers_form(cls, value: str | list[int] | None, info: ValidationInfo) -> str | list[int] | None:
        if value is None:
            return value
        if info.data.get("from_", "teacher") != "teacher":
            raise ValueError("`keep_layers` drops layers of the teacher; it needs `from: teacher`")
        if isinstance(value, str):
            if not KEEP_EVERY.match(value):
                raise ValueError(f"keep_layers {value!r}: use every_N (N >= 2, e.g. every_2) or a list of indices")
            return value
        if not value:
            raise ValueError("keep_layers: the list is empty; a student needs at least one layer")
        if any(i < 0 for i in value) or len(set(value)) != len(value):
            raise ValueError(f"keep_layers {value}: layer indices must be distinct and >= 0")
        return sorted(value)


class Stage(Section):
    """One training step of the recipe; stages run in order, each starting from the previous one's model."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Stage name, unique in the recipe; `--set stages.NAME.args.x=...` addresses it.",
    )
    method: str = Field(
        description="Training method: `sft`, `reward`, `dpo`, `kto`, `grpo`, `rloo`, `distill` (TRL's stable "
        "trainers); `orpo`, `cpo` (trl.experimental, with `experimental: true`). See docs/methods.md."
    )
    base: str | None = Field(
        None,
        description="Model this stage starts from: `previous` (the previous stage's output; the default after the "
        "first stage), `base_model` (the recipe's base model; the first stage's default), or any model reference "
        "(built-in name, directory, hub id, `models:/NAME@ALIAS`).",
    )
    experimental: bool = Field(
        False,
        description="Allow a method from `trl.experimental` (`orpo`, `cpo`): TRL may change or remove those in any "
        "release, so a recipe says it knows.",
    )
    peft: Peft | None = Field(None, description="Adapter training; omit for full fine-tuning.")
    data: Data | None = Field(None, description="Data for this stage only; defaults to the recipe's `data`.")
    ref_model: str | None = Field(
        None,
        description="`dpo`/`kto`: the reference model. Default: the model the stage starts from — with LoRA the "
        "same weights with the adapter switched off (no second copy in memory), otherwise a frozen copy.",
    )
    rewards: list[Reward] = Field(
        default_factory=list, description="`grpo`/`rloo`: the rewards the policy is optimised for, with weights."
    )
    teacher: str | None = Field(
        None,
        description="`distill`: the teacher. Default: the model the stage starts from (`base`: the previous "
        "stage's output, e.g. an SFT model). Any model reference with the student's vocabulary.",
    )
    student: Student | None = Field(
        None,
        description="`distill`: the student, e.g. `{from: teacher, keep_layers: every_2}` (half depth) or "
        "`{from: smollm2-135m-instruct}`.",
    )
    mode: Literal["on_policy", "off_policy"] | None = Field(
        None,
        description="`distill`: `on_policy` (default; the student answers the prompts and learns the teacher's "
        "distribution on its own answers: TRL's DistillationTrainer, reverse KL) or `off_policy` (on the data's "
        "completions, classic knowledge distillation, forward KL by default; no generation, much faster on CPU).",
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Arguments of the method's TRL config (`SFTConfig` for `sft`, `DPOConfig` for `dpo`, ...), "
        "checked field by field. tuneloop sets `output_dir`, and turns `bf16` off where no GPU supports it.",
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:

        if value in REMOVED:
            raise ValueError(f"method {value!r}: {REMOVED[value]}")
        if value not in methods():
            hint = closest(value, methods())
            did = f"did you mean {hint}? " if hint else ""
            raise ValueError(f"unknown method {value!r}; {did}available: {', '.join(methods())}")
        return value

    # Field validators (not one model validator) so each error points at the key that is wrong.
    @field_validator("experimental")
    @classmethod
    def _experimental_fits(cls, value: bool, info: ValidationInfo) -> bool:

        method = info.data.get("method")
        if method in EXPERIMENTAL and not value:
            raise ValueError(
                f"{method} is in trl.experimental, which TRL may change or remove in any release; add "
                f"`experimental: true` to the stage to use it (or use `dpo`, which is stable)"
            )
        if value and method is not None and method not in EXPERIMENTAL:
            raise ValueError(f"`experimental` is for {', '.join(sorted(EXPERIMENTAL))}; {method} is stable")
        return value

    @field_validator("ref_model")
    @classmethod
    def _ref_model_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        method = info.data.get("method")
        if value and method is not None and method not in REFERENCE_METHODS:
            raise ValueError(f"`ref_model` applies to {'/'.join(REFERENCE_METHODS)}; {method} has no reference model")
        return value

    @field_validator("rewards")
    @classmethod
    def _rewards_fit(cls, value: list[Reward], info: ValidationInfo) -> list[Reward]:
        method = info.data.get("method")
        if method in ONLINE_METHODS and not value:
            raise ValueError(
                f"{method} needs `rewards:`, e.g. rewards: [{{builtin: debian_synopsis_rules}}, "
                "{function: 'mypkg.rewards:score', weight: 0.5}]"
            )
        if value and method is not None and method not in ONLINE_METHODS:
            raise ValueError(f"`rewards` apply to {'/'.join(ONLINE_METHODS)}; {method} does not generate")
        return value

    @field_validator("teacher", "mode")
    @classmethod
    def _distill_only(cls, value: Any, info: ValidationInfo) -> Any:
        method = info.data.get("method")
        if value is not None and method is not None and method != "distill":
            raise ValueError(f"`{info.field_name}` is for `distill` stages; {method} has no teacher")
        return value

    @field_validator("student")
    @classmethod
    def _student_fits(cls, value: Student | None, info: ValidationInfo) -> Student | None:
        method = info.data.get("method")
        if method == "distill" and value is None:
            raise ValueError(
                "distill needs `student:`, e.g. student: {from: teacher, keep_layers: every_2} (half depth) or "
                "student: {from: MODEL} (a smaller model with the teacher's vocabulary)"
            )
        if value is not None and method is not None and method != "distill":
            raise ValueError(f"`student` is for `distill` stages; {method} trains the model it starts from")
        return value

    @field_validator("args")
    @classmethod
    def _args_fit(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "reward_weights" in value and info.data.get("rewards"):
            raise ValueError("give weights in `rewards[].weight`, not `args.reward_weights`")
        return value


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
    cost: Cost = Field(default_factory=lambda: Cost(), description="How the run is priced (device-hours × price).")
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
    feedback: Campaign | None = Field(
        None,
        description="A feedback campaign kept with the recipe (`tuneloop feedback create RECIPE`); the same keys "
        "as a `configs/feedback/*.yaml` file.",
    )
    sweep: Sweep | None = Field(
        None,
        description="A hyperparameter sweep over this recipe (`tuneloop sweep RECIPE`): search space in `--set` "
        "paths, objectives (metrics, cost), budget, sampler, pruning; see docs/sweeps.md.",
    )
    loop: Loop | None = Field(
        None,
        description="Feedback rounds (`tuneloop loop RECIPE`): served traffic judged by raters, exported, a "
        "challenger retrained from the champion, gated and promoted; see docs/loop.md.",
    )
    monitor: Monitor | None = Field(
        None,
        description="Watch this recipe's served model (`tuneloop monitor RECIPE`): traffic window, reference, drift "
        "tests, retraining triggers and cooldown; see docs/monitoring.md.",
    )

    @model_validator(mode="after")
    def _stage_names_unique(self) -> Recipe:
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dupes)}")
        if self.registry is not None and not self.tracking.mlflow:
            raise ValueError("`registry` needs MLflow tracking: remove `tracking.mlflow: false` or the registry")
        if self.loop is not None and self.loop.model is None and self.registry is None:
            raise AtKey("loop", "name the registered model to retrain in `loop.model` (or add `registry:`)")
        if self.monitor is not None and self.monitor.model is None and self.registry is None:
            raise AtKey("monitor", "name the registered model to watch in `monitor.model` (or add `registry:`)")
        fill_prepare_defaults(self)
        return self

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
from tuneloop.config.feedback import Campaign  # noqa: E402
from tuneloop.config.lifecycle import Cost, Registry, Tracking  # noqa: E402
from tuneloop.config.loop import Loop  # noqa: E402
from tuneloop.config.monitor import Monitor  # noqa: E402
from tuneloop.config.prepare import Step, fill_prepare_defaults  # noqa: E402
from tuneloop.config.sweep import Sweep  # noqa: E402

Data.model_rebuild()
Recipe.model_rebuild()
