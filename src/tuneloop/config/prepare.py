"""`data.prepare:` — the ordered steps that turn a source into the rows a recipe trains and evaluates on.

Each step is a mapping with a `step:` key (`dedup`, `filter`, `decontaminate`, `mix`, `sample`, `split`), so a
recipe reads top to bottom in the order the steps run. Steps act on the source's raw columns (before the `format`
block renders them); `columns:` defaults to the columns the format's prompt template reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.config.schema import Data, Section

if TYPE_CHECKING:
    from tuneloop.config.schema import Recipe

STEP_NAMES = ("dedup", "filter", "decontaminate", "mix", "sample", "split")
Splits = list[str] | Literal["all"]


class _Step(Section):
    step: str = Field(description="Step name.")  # first, so resolved recipes show it first
    columns: list[str] | None = Field(
        None,
        description="Text columns the step compares or matches (joined with a newline). Default: the columns the "
        "format's prompt template reads; `prompt`/`text` for pre-formatted rows.",
    )
    splits: Splits = Field(["train"], description="Splits the step changes: a list, or `all`.")


class Dedup(_Step):
    """Drop repeated rows inside each split: exact (normalised text) and, with `method: near`, near-copies
    found by MinHash LSH (datasketch) whose estimated Jaccard similarity reaches the threshold."""

    step: Literal["dedup"]
    method: Literal["exact", "near"] = Field("near", description="`exact`, or `near` (exact first, then MinHash).")
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity of word n-gram sets for `near`.")
    ngram: int = Field(3, ge=1, le=10, description="Words per shingle (3 suits texts of tens of words).")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: slower, more exact).")


class Filter(_Step):
    """Keep rows that pass every condition given; each removed row is counted under the first condition it fails."""

    step: Literal["filter"]
    min_tokens: int | None = Field(None, ge=0, description="Fewer tokens than this (whole example) are dropped.")
    max_tokens: int | None = Field(
        None, gt=0, description="More tokens than this are dropped (e.g. the stage's max_length, to avoid truncation)."
    )
    languages: list[str] | None = Field(
        None, description="ISO 639-1 codes to keep (`[en]`), detected offline by lingua on the text columns."
    )
    drop_regex: str | None = Field(None, description="Rows whose text matches this regular expression are dropped.")
    keep_regex: str | None = Field(None, description="Only rows whose text matches this regular expression are kept.")
    function: str | None = Field(
        None, description="`package.module:function` taking a row (dict) and returning True to keep it."
    )
    tokenizer: str | None = Field(
        None, description="Model whose tokenizer counts tokens; default: the recipe's base model (filled in)."
    )

    @model_validator(mode="after")
    def _something(self) -> Filter:
        if not any(
            v is not None
            for v in (self.min_tokens, self.max_tokens, self.languages, self.drop_regex, self.keep_regex, self.function)
        ):
            raise ValueError(
                "a filter needs a condition: min_tokens, max_tokens, languages, drop_regex, keep_regex or function"
            )
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is above max_tokens ({self.max_tokens})")
        return self

    @field_validator("drop_regex", "keep_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        import re

        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return value

    @field_validator("function")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        if value is not None and (value.count(":") != 1 or not all(value.split(":"))):
            raise ValueError(f"expected package.module:function, got {value!r}")
        return value

    @field_validator("languages")
    @classmethod
    def _iso(cls, value: list[str] | None) -> list[str] | None:
        try:
            from lingua import IsoCode639_1
        except ImportError:  # the `data` extra is missing: validation says so (tuneloop.recipes.data_checks)
            return [c.lower() for c in value] if value else value
        for code in value or []:
            try:
                IsoCode639_1.from_str(code.lower())
            except ValueError:
                raise ValueError(f"unknown ISO 639-1 language code {code!r} (e.g. en, de, fr)") from None
        return [c.lower() for c in value] if value else value


class Against(Section):
    """Rows a training split must not contain near-copies of: a split of this dataset, or other data."""

    split: str = Field(description="Split name (of `data`, or of this dataset when `data` is absent).")
    data: Any | None = Field(None, description="Another data section (source, task, format); default: this one.")
    columns: list[str] | None = Field(None, description="Text columns of the reference rows (default as above).")

    @field_validator("data")
    @classmethod
    def _data(cls, value: Any) -> Any:

        return value if value is None or isinstance(value, Data) else Data.model_validate(value)


class Decontaminate(_Step):
    """Drop training rows that are near-copies (MinHash LSH, Jaccard >= threshold) or exact copies of rows
    that the model is evaluated on, which would inflate its scores."""

    step: Literal["decontaminate"]
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity of word n-gram sets.")
    ngram: int = Field(3, ge=1, le=10, description="Words per shingle.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")
    against: list[Against] | None = Field(
        None,
        description="What to compare with. Default: the data's `eval_split` and every evaluation task's rows "
        "(filled in when the recipe loads, so the resolved recipe lists them).",
    )


class MixSource(Section):
    source: str = Field(description="Another source with the columns the format needs (built-in, file, hub id).")
    task: str | None = Field(None, description="Task of a built-in dataset.")
    subset: str | None = Field(None, description="Hub dataset configuration.")
    revision: str | None = Field(None, description="Hub revision.")
    split: str = Field("train", description="Split of that source to draw from.")
    weight: float = Field(gt=0, description="Share of the mixed split (weights are normalised).")


class Mix(_Step):
    """Mix other sources into a split with weights: each source gives round(share × rows) rows, drawn without
    replacement (with replacement, and reported as upsampled, where a source has fewer)."""

    step: Literal["mix"]
    sources: list[MixSource] = Field(min_length=1, description="The sources mixed in.")
    weight: float = Field(1.0, gt=0, description="Weight of the dataset's own rows.")
    rows: int | None = Field(None, gt=0, description="Rows in the mixed split; default: the split's own row count.")
    seed: int = Field(0, description="Seed of the draw.")
    splits: Splits = Field(["train"], description="Splits mixed (each draws from the sources' `split`).")


class Sample(_Step):
    """A seeded random subset of each split: `rows` or `fraction`."""

    step: Literal["sample"]
    rows: int | None = Field(None, gt=0, description="Keep this many rows (all, when the split has fewer).")
    fraction: float | None = Field(None, gt=0, le=1, description="Keep this share of the rows.")
    seed: int = Field(0, description="Seed of the draw.")

    @model_validator(mode="after")
    def _one(self) -> Sample:
        if (self.rows is None) == (self.fraction is None):
            raise ValueError("give exactly one of `rows` or `fraction`")
        return self


class Split(_Step):
    """Re-split rows into new splits: random, or grouped by a column so that every group (a source package, a
    document, a user) lands in one split and near-copies inside a group cannot leak across splits."""

    step: Literal["split"]
    fractions: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1},
        description="Split name -> share of the rows (of the groups, with `by`); shares must sum to 1.",
    )
    by: str | None = Field(None, description="Group column; rows with the same value stay in the same split.")
    seed: int = Field(0, description="Seed of the assignment (a hash of seed and group, so it is stable).")
    splits: Splits = Field("all", description="Splits whose rows are pooled and re-split.")

    @field_validator("fractions")
    @classmethod
    def _sum(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or any(v <= 0 for v in value.values()):
            raise ValueError("every share must be above 0")
        if abs(sum(value.values()) - 1) > 1e-6:
            raise ValueError(f"shares sum to {sum(value.values()):g}, not 1")
        return value


Step = Annotated[Dedup | Filter | Decontaminate | Mix | Sample | Split, Field(discriminator="step")]


def fill_prepare_defaults(recipe: Recipe) -> None:
    """What the prepare steps leave to the recipe: `decontaminate` without `against` compares with what the recipe
    evaluates on (the data's eval split and every evaluation task's rows), and a token-counting `filter` without a
    tokenizer counts with the base model's. Filled in at validation so the resolved recipe says exactly what was used.
    """
    sections = [d for d in [recipe.data, *(s.data for s in recipe.stages)] if d is not None]
    for data in sections:
        for step in data.prepare:
            counts_tokens = isinstance(step, Filter) and (step.min_tokens, step.max_tokens) != (None, None)
            if counts_tokens and step.tokenizer is None:
                step.tokenizer = recipe.base_model.name
            if not isinstance(step, Decontaminate) or step.against is not None:
                continue
            against: list[Against] = []
            if data.eval_split:
                against.append(Against(split=data.eval_split))
            for task in recipe.evaluation.tasks if recipe.evaluation else []:
                other = task.data if task.data is not None and task.data != data else None
                ref = Against(split=task.split, data=other)
                if ref not in against:
                    against.append(ref)
            step.against = against


def needs_data_extra(step: Any) -> bool:
    """Whether a step runs datasketch (MinHash) or lingua, which come with the `data` extra."""
    near = isinstance(step, Dedup) and step.method == "near"
    return near or isinstance(step, Decontaminate) or (isinstance(step, Filter) and bool(step.languages))
