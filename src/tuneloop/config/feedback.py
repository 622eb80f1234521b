"""Schema of a feedback campaign (`configs/feedback/*.yaml`): which prompts, which models answer them, what raters
do with the answers, how many raters see each item, and how votes become training data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.config.errors import AtKey
from tuneloop.config.evaluation import Generation
from tuneloop.config.prepare import Dedup, Step
from tuneloop.config.schema import NAME_PATTERN, Data, Section
from tuneloop.config.when import parse_when


class Answerer(Section):
    """A model whose answers raters judge: a checkpoint (any model reference) or an OpenAI-compatible endpoint."""

    name: str = Field(pattern=NAME_PATTERN, description="Label in results and exports; raters never see it.")
    model: str | None = Field(
        None, description="Built-in name, directory, run directory, hub id or `models:/NAME@ALIAS`."
    )
    endpoint: str | None = Field(None, description="Base URL of an OpenAI-compatible server (`http://host:8000/v1`).")
    served_model: str | None = Field(None, description="With `endpoint`: the model name to ask for.")
    logged: bool = Field(
        False,
        description="With `requests:` prompts: the answer the endpoint actually gave, read from the request log "
        "(what users saw, with the version that served it), instead of generating one.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Answerer:
        if sum((bool(self.model), bool(self.endpoint), self.logged)) != 1:
            raise ValueError("give exactly one of `model`, `endpoint` or `logged: true`")
        if self.served_model and not self.endpoint:
            raise ValueError("`served_model` goes with `endpoint`")
        return self


class Requests(Section):
    """Prompts sampled from the request log of `tuneloop serve` (the workspace database, or
    `TUNELOOP_DATABASE_URL`): what users actually asked, instead of a dataset."""

    model: str | None = Field(None, description="Only requests for this served model name (default: any).")
    since: str | None = Field(
        "7d", description="Oldest request: a duration back from now (`30m`, `12h`, `7d`) or an ISO date/time."
    )
    until: str | None = Field(None, description="Newest request (same forms); default: now.")
    endpoints: list[Literal["chat", "completions"]] = Field(
        default_factory=lambda: ["chat", "completions"], min_length=1, description="Which endpoints' requests."
    )
    sample: int = Field(200, gt=0, description="At most this many prompts, drawn at random (campaign `seed`).")
    prepare: list[Step] = Field(
        default_factory=lambda: [Dedup(step="dedup", method="exact")],
        description="Data steps run on the prompts before sampling (`dedup`, `filter`, `decontaminate`; see "
        "docs/data.md). Default: drop exact repeats.",
    )

    @field_validator("since", "until")
    @classmethod
    def _when(cls, value: str | None) -> str | None:
        if value is not None:
            parse_when(value)  # ValueError says which forms work
        return value


class Question(Section):
    """One 1–5 rating question."""

    name: str = Field(pattern=NAME_PATTERN, description="Key of the score in votes and exports.")
    text: str = Field(description="What the rater is asked, e.g. 'Is the synopsis accurate?'.")


class Tasks(Section):
    """What raters do with the answers."""

    pairwise: bool = Field(True, description="Two answers side by side (sides swapped at random): A, B, tie, both bad.")
    rating: list[Question] = Field(default_factory=list, description="Rate one answer 1–5 on each question.")
    rewrite: bool = Field(False, description="Edit one answer into a good one (becomes SFT data).")


class Export(Section):
    """How votes become training rows (`tuneloop feedback export`)."""

    ties: Literal["drop"] = Field("drop", description="Pairwise items whose majority is a tie give no pair.")
    both_bad: Literal["drop", "rewrite"] = Field(
        "drop",
        description="Items judged both bad give no pair; `rewrite` uses a rewrite of the item, when there is one, "
        "as `chosen` against both answers.",
    )
    kto_question: str | None = Field(None, description="Rating question KTO labels come from (default: the first).")
    desirable_at: float = Field(4.0, ge=1, le=5, description="Mean rating at or above which an answer is desirable.")
    undesirable_at: float = Field(2.0, ge=1, le=5, description="Mean rating at or below which it is undesirable.")
    include_flagged: bool = Field(False, description="Keep the votes of raters flagged on gold items.")

    @model_validator(mode="after")
    def _thresholds(self) -> Export:
        if self.undesirable_at >= self.desirable_at:
            raise ValueError("undesirable_at must be below desirable_at")
        return self


class Campaign(Section):
    """A feedback campaign: the unit `tuneloop feedback create|serve|status|export|close` works on."""

    name: str = Field(pattern=NAME_PATTERN, description="Campaign name, unique in the feedback store.")
    description: str | None = Field(None, description="What the campaign is for.")
    data: Data | None = Field(None, description="Where the prompts come from: a recipe-style `data:` section.")
    requests: Requests | None = Field(
        None, description="Or: prompts sampled from the endpoint's request log (served traffic)."
    )
    split: str = Field("test", description="Split of `data` the prompts are taken from.")
    max_items: int | None = Field(None, gt=0, description="Use only the first N prompts.")
    models: list[Answerer] = Field(min_length=1, description="The models that answer every prompt.")
    generation: Generation = Field(default_factory=Generation, description="Decoding settings for the answers.")
    tasks: Tasks = Field(default_factory=Tasks, description="What raters do.")
    overlap: int = Field(3, ge=1, le=20, description="Raters who judge each item (agreement needs 2 or more).")
    gold_share: float = Field(
        0.1,
        ge=0,
        le=0.5,
        description="Extra pairwise items whose right answer is known (the reference against another prompt's "
        "reference), shuffled in to measure each rater's reliability. Needs references.",
    )
    gold_threshold: float = Field(
        0.7, ge=0, le=1, description="Gold accuracy below which a rater is flagged (their votes leave exports)."
    )
    gold_min_items: int = Field(5, ge=1, description="Gold answers a rater needs before being judged.")
    guidelines: str = Field(
        description="What raters should prefer, in markdown; a path to a `.md` file (next to the campaign) or the "
        "text itself. Every vote records the version it was cast under."
    )
    export: Export = Field(default_factory=Export, description="How votes become training rows.")
    seed: int = Field(0, description="Seed for gold items and decoys.")

    @field_validator("models")
    @classmethod
    def _unique_names(cls, value: list[Answerer]) -> list[Answerer]:
        names = [m.name for m in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
        return value

    @model_validator(mode="after")
    def _tasks_fit(self) -> Campaign:
        if (self.data is None) == (self.requests is None):
            raise AtKey(
                "requests" if self.requests else "data",
                "give exactly one prompt source: `data:` or `requests:` (served traffic)",
            )
        logged = [i for i, m in enumerate(self.models) if m.logged]
        if logged and self.requests is None:
            raise AtKey(
                ("models", logged[0], "logged"),
                "`logged: true` answers come from the request log; it needs `requests:` prompts",
            )
        if len(logged) > 1:
            raise AtKey(
                ("models", logged[1], "logged"), "only one model can be `logged` (the log holds one answer per request)"
            )
        if self.requests is not None:
            if "gold_share" in self.model_fields_set and self.gold_share > 0:
                raise AtKey(
                    "gold_share",
                    "gold items are built from references, and logged requests have none; set gold_share: 0",
                )
            self.gold_share = 0.0
        if not (self.tasks.pairwise or self.tasks.rating or self.tasks.rewrite):
            raise AtKey("tasks", "turn on at least one of pairwise, rating, rewrite")
        if self.tasks.pairwise and len(self.models) < 2:
            raise AtKey("models", "pairwise comparison needs at least two `models`")
        questions = [q.name for q in self.tasks.rating]
        if self.export.kto_question and self.export.kto_question not in questions:
            raise AtKey(("export", "kto_question"), f"{self.export.kto_question!r} is not a rating question")
        return self
