"""What a sweep has spent and what its next trial will cost.

Every trial keeps its spend in the study (user attribute `spent`, updated while it runs), so every worker of a
sweep — on one machine or many — sees the same total, a killed trial's cost is counted once from its last update,
and a resumed sweep does not pay again for what it already has. A trial's cost is predicted from the recipe's
planned work (training examples = steps × batch × accumulation) at the measured cost per example of earlier trials,
plus their median evaluation cost.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from tuneloop.config.sweep import Budget

KEYS = ("money", "device_hours")


def zero() -> dict[str, float]:
    return dict.fromkeys(KEYS, 0.0)


def spent_of(trial: Any) -> dict[str, float]:
    """A trial's spend. A retried trial (Optuna copies the stale trial's attributes into the retry) counts only
    what it spent itself: the record names the trial that wrote it."""
    record = trial.user_attrs.get("spent")
    if trial.state.name == "WAITING" or not record or record.get("trial") != trial.number:
        return zero()
    return {k: float(record.get(k, 0.0)) for k in KEYS}


def add(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in KEYS}


def total_spent(trials: list[Any], exclude: int | None = None) -> dict[str, float]:
    out = zero()
    for t in trials:
        if t.number != exclude:
            out = add(out, spent_of(t))
    return out


def reserved(trials: list[Any], exclude: int | None = None) -> dict[str, float]:
    """What running trials (other workers') are still expected to spend beyond what they reported."""
    out = zero()
    for t in trials:
        if t.number == exclude or t.state.name != "RUNNING":
            continue
        predicted = t.user_attrs.get("predicted") or {}
        spent = spent_of(t)
        out = add(out, {k: max(0.0, float(predicted.get(k, 0.0)) - spent[k]) for k in KEYS})
    return out


def started(trials: list[Any], exclude: int | None = None) -> int:
    """Trials that ran or run (not those the budget refused, not queued retries)."""
    return sum(
        1
        for t in trials
        if t.number != exclude and t.state.name != "WAITING" and t.user_attrs.get("outcome") != "not started"
    )


@dataclass
class CostModel:
    """Cost per training example and evaluation cost, measured on earlier trials of the sweep."""

    per_example: dict[str, float] | None
    evaluation: dict[str, float] | None

    @classmethod
    def from_trials(cls, trials: list[Any]) -> CostModel:
        rates: dict[str, list[float]] = {k: [] for k in KEYS}
        evals: dict[str, list[float]] = {k: [] for k in KEYS}
        for t in trials:
            a = t.user_attrs
            if a.get("trained_examples") and a.get("train_cost"):
                for k in KEYS:
                    rates[k].append(float(a["train_cost"][k]) / float(a["trained_examples"]))
            if a.get("eval_cost"):
                for k in KEYS:
                    evals[k].append(float(a["eval_cost"][k]))
        per = {k: statistics.median(v) for k, v in rates.items()} if rates["money"] else None
        ev = {k: statistics.median(v) for k, v in evals.items()} if evals["money"] else None
        return cls(per, ev)

    def predict(self, examples: int | None) -> dict[str, float] | None:
        """Training plus evaluation; None before any trial has measured a cost per example."""
        if self.per_example is None or not examples:
            return None
        ev = self.evaluation or zero()
        return {k: self.per_example[k] * examples + ev[k] for k in KEYS}

    def evaluation_cost(self) -> dict[str, float]:
        return dict(self.evaluation) if self.evaluation else zero()


def over(budget: Budget, amount: dict[str, float]) -> str | None:
    """Which money/device-hour limit `amount` exceeds, in words; None when it fits."""
    if budget.money is not None and amount["money"] > budget.money:
        return f"money {amount['money']:.4g} > budget {budget.money:g}"
    if budget.device_hours is not None and amount["device_hours"] > budget.device_hours:
        return f"device-hours {amount['device_hours']:.4g} > budget {budget.device_hours:g}"
    return None


def limit(budget: Budget) -> dict[str, float | None]:
    return {"money": budget.money, "device_hours": budget.device_hours}


def share(budget: Budget, amount: dict[str, float]) -> float | None:
    """Largest share of a money/device-hour limit used (None without such a limit)."""
    shares = [amount[k] / v for k, v in limit(budget).items() if v]
    return max(shares) if shares else None
