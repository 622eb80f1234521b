"""A recorded grid as an executor: every configuration's intermediate scores with their spend, its final values and
its measured cost, replayed through the same trial loop (budget guard, pruning, samplers) as live trials.

This is how HPOBench and YAHPO compare optimisers: run the grid once for real, then replay search strategies
against the table in seconds, over many seeds (scripts/bench_sweep.py). Tests use it for fast trials too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tuneloop.config.sweep import Param
from tuneloop.sweep.engine import Outcome, TrialContext, TrialFailed

SPEND_UPDATES = 8  # spend updates per reporting interval


class TableExecutor:
    """Trials looked up by their values in a recorded table (`configs`: params, progress, values, cost)."""

    def __init__(self, table: dict[str, Any], delay_s: float = 0.0):
        self.table = table
        self.delay_s = delay_s
        self.by_params = {_key(c["params"]): c for c in table["configs"]}

    @classmethod
    def load(cls, path: Path, delay_s: float = 0.0) -> TableExecutor:
        return cls(json.loads(Path(path).read_text()), delay_s)

    def space(self) -> dict[str, Param]:
        """The table's configurations as a categorical space (every recorded value of each key)."""
        keys = list(self.table["configs"][0]["params"])
        return {k: Param(categorical=sorted({c["params"][k] for c in self.table["configs"]})) for k in keys}

    def planned_examples(self, params: dict[str, Any]) -> int | None:
        return self.by_params[_key(params)].get("trained_examples")

    def __call__(self, ctx: TrialContext) -> Outcome:
        config = self.by_params.get(_key(ctx.params))
        if config is None:
            raise TrialFailed(f"no recorded configuration {ctx.params}", {"money": 0.0, "device_hours": 0.0})
        before = (0.0, 0.0)
        for step, value, money, hours in config.get("progress") or []:
            for k in range(1, SPEND_UPDATES):  # a live trial updates its spend every few seconds between reports
                if self.delay_s:
                    time.sleep(self.delay_s / SPEND_UPDATES)
                f = k / SPEND_UPDATES
                ctx.spend(
                    {"money": before[0] + f * (money - before[0]), "device_hours": before[1] + f * (hours - before[1])}
                )
            if self.delay_s:
                time.sleep(self.delay_s / SPEND_UPDATES)
            ctx.report(int(step), value, {"money": money, "device_hours": hours})
            before = (money, hours)
        if config.get("failed"):
            raise TrialFailed(config["failed"], dict(config["cost"]))
        return Outcome(
            values=dict(config["values"]),
            cost=dict(config["cost"]),
            train_cost=config.get("train_cost"),
            eval_cost=config.get("eval_cost"),
            trained_examples=config.get("trained_examples"),
            steps=config["progress"][-1][0] if config.get("progress") else None,
        )


def _key(params: dict[str, Any]) -> str:
    return json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True)
