"""The evaluation part of the schema: suites of tasks, generation settings, gates and in-training evaluation.

A suite is its own YAML file (`configs/eval/*.yaml`) or a recipe's `evaluation:` section; both validate here, so a
suite written for `tuneloop eval` works unchanged inside a recipe. Field descriptions are the documentation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.config.schema import NAME_PATTERN, Data, Section
from tuneloop.config.trainer_fields import closest

KINDS = ("generation", "classification", "perplexity", "preference")
# A data column with a row's references (a list of strings, or one): scored instead of the completion, so that
# rows can carry several references, or references and no completion at all.
REFERENCES = "references"
GENERATION_METRICS = (
    "bleu",
    "chrf",
    "rouge1",
    "rouge2",
    "rougeL",
    "rougeLsum",
    "exact_match",
    "token_f1",
    "similarity",
    "synopsis_rules",  # share of answers following Debian's synopsis rules (tuneloop.rewards)
    "reward_score",  # mean score of the task's `reward_model`
)
CLASSIFICATION_METRICS = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_micro",
    "recall_micro",
    "f1_micro",
    "roc_auc",
)
METRICS = {
    "generation": GENERATION_METRICS,
    "classification": CLASSIFICATION_METRICS,
    "perplexity": ("perplexity",),
    "preference": ("preference_accuracy",),
}
DEFAULT_METRICS = {
    "generation": ["bleu", "chrf", "rougeL", "similarity"],
    "classification": ["accuracy", "f1_macro", "f1_micro", "roc_auc"],
    "perplexity": ["perplexity"],
    "preference": ["preference_accuracy"],
}


class Generation(Section):
    """Decoding settings. Greedy by default, so scores are reproducible and backends comparable."""

    max_new_tokens: int = Field(64, gt=0, description="Most tokens generated per answer.")
    temperature: float = Field(0.0, ge=0, description="0 is greedy decoding; above 0 samples.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (sampling only).")
    batch_size: int = Field(16, gt=0, description="Prompts per forward pass (transformers backend).")
    stop: list[str] | None = Field(None, description="Strings that end an answer (cut before them).")


class EvalTask(Section):
    """One thing the model is judged on: a dataset split, how to ask, and which metrics to compute."""

    name: str = Field(pattern=NAME_PATTERN, description="Task name, unique in the suite; names its results.")
    data: Data | None = Field(
        None,
        description="Rows to evaluate, same syntax as a recipe's `data`; defaults to the recipe's `data` "
        "(so the prompt format matches training).",
    )
    split: str = Field("test", description="Split of `data` to evaluate on.")
    max_rows: int | None = Field(None, gt=0, description="Use only the first N rows of the split.")
    kind: Literal["generation", "classification", "perplexity", "preference"] | None = Field(
        None,
        description="`generation` scores generated text against references; `classification` parses a label "
        "from the answer and scores each label's likelihood (ROC-AUC); `perplexity` scores the reference "
        "completions; `preference` reads prompt/chosen/rejected rows (e.g. held-out votes) and scores how often "
        "the model finds the chosen answer likelier per token (`preference_accuracy`). Built-in tasks know their "
        "kind; otherwise `generation`.",
    )
    labels: list[str] | None = Field(
        None, description="Classification labels (built-in classification tasks bring theirs)."
    )
    metrics: list[str] | None = Field(
        None,
        description="Metrics to compute; defaults by kind (generation: bleu, chrf, rougeL, similarity; "
        "classification: accuracy, f1_macro, f1_micro, roc_auc). `evaluate:<name>` loads a Hugging Face "
        "`evaluate` metric (needs the hub).",
    )
    generation: Generation = Field(default_factory=Generation, description="Decoding settings.")
    reward_model: str | None = Field(
        None,
        description="A reward model that scores each answer given its prompt (a sequence classifier with one "
        "output, e.g. what a `reward` stage saved: its directory, a hub id, `models:/NAME@ALIAS`); adds the "
        "metric `reward_score` (mean score, with CI) to a generation task.",
    )

    @model_validator(mode="after")
    def _reward_score_has_a_model(self) -> EvalTask:
        if self.metrics and "reward_score" in self.metrics and not self.reward_model:
            raise ValueError("metric `reward_score` needs the task's `reward_model:` (the model that gives the scores)")
        if self.reward_model and self.kind not in (None, "generation"):
            raise ValueError(f"`reward_model` scores generated answers; a {self.kind} task generates none")
        return self

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str] | None) -> list[str] | None:
        if metrics is None:
            return metrics
        known = set(GENERATION_METRICS + CLASSIFICATION_METRICS + ("perplexity", "preference_accuracy"))
        bad = [m for m in metrics if m not in known and not m.startswith("evaluate:")]
        if bad:
            hints = [f"{b!r}" + (f" (did you mean {h}?)" if (h := closest(b, sorted(known))) else "") for b in bad]
            raise ValueError(
                f"unknown metric {', '.join(hints)}; built-in metrics: {', '.join(sorted(known))}, "
                "or `evaluate:<name>` for a Hugging Face evaluate metric"
            )
        return metrics

    def resolved_kind(self, builtin_kind: str | None) -> str:
        return self.kind or builtin_kind or "generation"

    def resolved_metrics(self, kind: str) -> list[str]:
        names = list(self.metrics) if self.metrics is not None else list(DEFAULT_METRICS[kind])
        if self.reward_model and "reward_score" not in names:
            names.append("reward_score")
        return names


class GateRule(Section):
    """A condition the evaluated model must meet against the baseline; a failed rule fails the run."""

    metric: str = Field(description="Metric name, e.g. `rougeL` (or `task/metric` when several tasks have it).")
    max_drop: float | None = Field(
        None, ge=0, description="Largest allowed drop vs the baseline, in the metric's units (points for scores)."
    )
    must_improve: bool = Field(
        False, description="The model must beat the baseline with a paired bootstrap p-value below `p_value`."
    )
    p_value: float = Field(0.05, gt=0, lt=1, description="Significance level for `must_improve`.")
    min: float | None = Field(None, description="Absolute floor for the model's value (e.g. accuracy >= 60).")
    max: float | None = Field(None, description="Absolute ceiling (e.g. perplexity <= 20).")

    @model_validator(mode="after")
    def _says_something(self) -> GateRule:
        if self.max_drop is None and not self.must_improve and self.min is None and self.max is None:
            raise ValueError("a gate rule needs `max_drop`, `must_improve`, `min` or `max`")
        return self


class DuringTraining(Section):
    """Generation metrics on a small subset every N optimizer steps, logged with the training curves."""

    every_steps: int = Field(gt=0, description="Evaluate every N optimizer steps.")
    task: str | None = Field(None, description="Which suite task (default: the first generation task).")
    rows: int = Field(16, gt=0, description="Rows of that task to generate for (kept small: it pauses training).")


class Evaluation(Section):
    """How the recipe's model is judged: a suite of tasks, run on the baseline and on the trained model."""

    suite: str | None = Field(
        None,
        description="A suite file whose tasks are used (e.g. `eval/synopsis`, looked up next to the recipe, then "
        "under `configs/`); tasks given here merge over it by name.",
    )
    tasks: list[EvalTask] = Field(default_factory=list, description="Tasks, in addition to (or instead of) a suite.")
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="Generation engine: `transformers` (batched, everywhere) or `vllm` (offline)."
    )
    baseline: str | None = Field(
        "base",
        description="Model the trained one is compared with: `base` (the recipe's base model), `stage:NAME` (what "
        "an earlier stage produced, e.g. the SFT start of a DPO stage), any model reference, or null for none.",
    )
    gate: list[GateRule] = Field(default_factory=list, description="Rules the trained model must pass.")
    during_training: DuringTraining | None = Field(None, description="Generation metrics while training.")
    resamples: int = Field(1000, ge=100, description="Bootstrap resamples for confidence intervals and p-values.")

    @model_validator(mode="after")
    def _consistent(self) -> Evaluation:
        if not self.tasks and not self.suite:
            raise ValueError("give a `suite` or at least one task under `tasks`")
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task names must be unique; repeated: {', '.join(dupes)}")
        if self.gate and self.baseline is None and any(r.max_drop is not None or r.must_improve for r in self.gate):
            raise ValueError("gate rules that compare (`max_drop`, `must_improve`) need a `baseline`")
        return self


class EvalSuite(Section):
    """A suite file under `configs/eval/`: tasks that `tuneloop eval` runs and recipes reuse."""

    name: str = Field(pattern=NAME_PATTERN, description="Suite name; names the results.")
    description: str | None = Field(None, description="What the suite measures, in a sentence.")
    defaults: list[str] = Field(default_factory=list, description="Other YAML files merged underneath this one.")
    tasks: list[EvalTask] = Field(min_length=1, description="Tasks, run in order.")
    resamples: int = Field(1000, ge=100, description="Bootstrap resamples for confidence intervals.")
