"""Schema of a recipe's `monitor:` section: which served traffic to watch, what to compare it with, how drift is
judged, and which signals start a retraining round (with a cooldown). Field descriptions are the documentation
(docs/monitoring.md); `tuneloop monitor RECIPE` reads it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.config.schema import NAME_PATTERN, Section
from tuneloop.config.sweep import duration_s

DESCRIPTORS = ("prompt_length", "language", "output_length", "refusal_rate", "empty_rate")


def _duration(value: str | None) -> str | None:
    if value is not None:
        duration_s(value)  # raises with the accepted forms
    return value


class Window(Section):
    """The served traffic judged by one check: the newest requests in the request log."""

    since: str = Field("24h", description="How far back the window reaches (`30m`, `24h`, `7d`).")
    model: str | None = Field(
        None, description="Only requests for this served model name (as clients send it); default: every request."
    )
    min_requests: int = Field(
        100,
        ge=10,
        description="Fewer requests than this in the window: the check says so and judges nothing (small windows "
        "make noisy verdicts).",
    )
    max_requests: int = Field(2000, ge=10, description="At most this many requests, the newest.")

    _since = field_validator("since")(_duration)

    @model_validator(mode="after")
    def _order(self) -> Window:
        if self.max_requests < self.min_requests:
            raise ValueError(f"max_requests ({self.max_requests}) is below min_requests ({self.min_requests})")
        return self


class Reference(Section):
    """What served traffic is compared with."""

    from_: Literal["champion", "recipe", "traffic"] = Field(
        "champion",
        alias="from",
        description="`champion`: the training data of the registered model's @champion (its registered recipe's "
        "`data`); `recipe`: this recipe's `data`; `traffic`: an earlier window of served traffic (`since`/`until`).",
    )
    since: str | None = Field(None, description="`traffic`: start of the reference window (`14d` or an ISO date).")
    until: str | None = Field(None, description="`traffic`: end of the reference window (`7d` or an ISO date).")
    max_rows: int = Field(2000, ge=10, description="At most this many reference rows (a seeded sample).")

    model_config = Section.model_config | {"populate_by_name": True}

    @model_validator(mode="after")
    def _window(self) -> Reference:
        if self.from_ == "traffic" and self.since is None:
            raise ValueError("a `traffic` reference needs `since` (and usually `until`), e.g. since: 14d, until: 7d")
        if self.from_ != "traffic" and (self.since or self.until):
            raise ValueError("`since`/`until` apply to a `traffic` reference only")
        return self


class Drift(Section):
    """How drift is judged (Evidently's defaults where it has them)."""

    embedding_auc: float = Field(
        0.55,
        gt=0.5,
        lt=1.0,
        description="Embedding drift: a classifier told to separate reference from window prompts on their "
        "all-MiniLM-L6-v2 embeddings reaches a cross-validated ROC-AUC above this (Evidently's default 0.55) and "
        "significantly above chance (p < `embedding_p_value`, which matters for small windows).",
    )
    embedding_p_value: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="Significance the embedding AUC needs against chance; 0.01 keeps false alarms of repeated "
        "checks rare (docs/monitoring.md measures them).",
    )
    descriptors: list[Literal[DESCRIPTORS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(DESCRIPTORS),
        description="Descriptors compared one by one: prompt and output length (Kolmogorov–Smirnov), language "
        "(chi-squared), refusal and empty-answer rates (Fisher's exact test).",
    )
    p_value: float = Field(0.05, gt=0, lt=1, description="A descriptor drifts when its test's p-value is below this.")
    share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Descriptor drift: at least this share of the descriptors drifted (Evidently's dataset-drift "
        "rule).",
    )


class ThumbsDown(Section):
    """An online quality signal: ratings that applications send to the gateway (`POST /v1/feedback`)."""

    above: float = Field(0.3, gt=0, lt=1, description="Trigger when the window's thumbs-down share exceeds this.")
    min_ratings: int = Field(20, ge=1, description="...once the window has at least this many ratings.")


class Triggers(Section):
    """What starts a retraining round. Several may be on; any one fires."""

    drift: bool = Field(True, description="Embedding or descriptor drift in the window.")
    new_votes: int | None = Field(
        None, ge=1, description="At least this many new feedback votes on the model's campaigns since the last round."
    )
    thumbs_down: ThumbsDown | None = Field(None, description="The share of thumbs-down ratings of served answers.")
    every: str | None = Field(None, description="A schedule: a round at least this often (`7d`), drift or not.")

    _every = field_validator("every")(_duration)


class Monitor(Section):
    """Watch served traffic and decide when to retrain (`tuneloop monitor RECIPE --once` / `--watch`)."""

    name: str | None = Field(None, pattern=NAME_PATTERN, description="The monitor's name; default: the recipe's.")
    model: str | None = Field(
        None, description="Registered model whose champion is watched; default: the recipe's `registry.name`."
    )
    window: Window = Field(default_factory=lambda: Window())
    reference: Reference = Field(default_factory=lambda: Reference())
    drift: Drift = Field(default_factory=lambda: Drift())
    triggers: Triggers = Field(default_factory=lambda: Triggers())
    cooldown: str = Field(
        "24h",
        description="After a trigger fires, later ones are held (and recorded as held) for this long, so one long "
        "drift does not start ten rounds.",
    )
    interval: str = Field("15m", description="`--watch`: time between checks.")
    seed: int = Field(0, description="Seed of the reference sample and the classifier's folds.")

    _durations = field_validator("cooldown", "interval")(_duration)
