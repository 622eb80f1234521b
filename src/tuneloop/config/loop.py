"""Schema of a recipe's `loop:` section: one feedback round is sample served traffic → feedback campaign → votes →
exported training data → retrain from the champion → evaluate against the champion → gate → register → promote.
Field descriptions are the documentation (docs/loop.md); `tuneloop loop RECIPE` reads it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.config.feedback import Campaign
from tuneloop.config.schema import NAME_PATTERN, Section, Stage
from tuneloop.config.sweep import duration_s


class Votes(Section):
    """When a round has heard enough."""

    min: int = Field(
        20,
        ge=1,
        description="Usable votes (gold items and flagged raters aside) a round needs to retrain; a round "
        "that has fewer at its deadline stops and says so.",
    )
    wait: str = Field("2d", description="Deadline after the campaign is created (`30m`, `2d`).")
    poll: str = Field("30s", description="How often the vote count is read while waiting.")
    price: float | None = Field(
        None,
        ge=0,
        description="What one vote costs (rater time, in the price table's currency): added to the "
        "round's cost next to training and evaluation.",
    )

    @field_validator("wait", "poll")
    @classmethod
    def _duration(cls, value: str) -> str:
        duration_s(value)
        return value


class Loop(Section):
    """A feedback round (`tuneloop loop RECIPE`): the champion's served answers judged by raters, turned into
    training data, and a challenger trained from the champion that is promoted only if it passes the gate."""

    name: str | None = Field(None, pattern=NAME_PATTERN, description="The loop's name; default: the recipe's.")
    model: str | None = Field(
        None, description="Registered model whose champion is retrained; default: the recipe's `registry.name`."
    )
    campaign: Campaign = Field(
        description="The feedback campaign each round creates (the keys of `configs/feedback/*.yaml`); its `name` "
        "is the prefix of the rounds' campaigns (`NAME-r1`, `NAME-r2`, ...), and `requests.since` of every round "
        "after the first is the start of the round before, so no request is judged twice."
    )
    votes: Votes = Field(default_factory=lambda: Votes())
    export: Literal["dpo", "kto", "sft"] = Field(
        "dpo", description="Training rows made of the votes (`tuneloop feedback export --format`)."
    )
    held_out: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="`dpo`: share of the exported pairs kept out of training; challenger and champion are both "
        "scored on them (`feedback/preference_accuracy`: how often each finds the raters' choice likelier), with a "
        "paired CI, next to the recipe's evaluation. 0 trains on every pair.",
    )
    retrain: list[Stage] = Field(
        min_length=1,
        description="Stages trained from the champion on the exported rows (their `data` defaults to the export), "
        "e.g. one `dpo` stage with LoRA.",
    )

    launch: str | None = Field(
        None,
        description="Train the challenger in processes of its own, started by this launcher (the round appends "
        "`-m tuneloop.train RECIPE --set ... --run-dir DIR`): `accelerate launch --config_file "
        "configs/accelerate/ddp.yaml` for every GPU of the machine, `torchrun --nproc_per_node 8`, or a site "
        "wrapper. Evaluation, gate, registration and promotion then run in the round's own process, as "
        "without a launcher. Default: train in the round's process.",
    )

    @field_validator("launch")
    @classmethod
    def _launcher(cls, value: str | None) -> str | None:
        import shlex

        if value is not None:
            try:
                words = shlex.split(value)
            except ValueError as e:
                raise ValueError(f"cannot split {value!r} into words: {e}") from None
            if not words:
                raise ValueError("an empty launcher: leave `launch` out to train in the round's process")
            if "tuneloop.train" in words:
                raise ValueError("give the launcher only: the round appends `-m tuneloop.train RECIPE ...` itself")
        return value

    @model_validator(mode="after")
    def _pairwise_for_preferences(self) -> Loop:
        if self.export == "dpo" and not self.campaign.tasks.pairwise:
            raise ValueError("`export: dpo` needs pairwise votes: set `campaign.tasks.pairwise: true`")
        if self.export == "kto" and not self.campaign.tasks.rating:
            raise ValueError("`export: kto` needs rating votes: add a question under `campaign.tasks.rating`")
        if self.export == "sft" and not self.campaign.tasks.rewrite:
            raise ValueError("`export: sft` needs rewrites: set `campaign.tasks.rewrite: true`")
        return self
