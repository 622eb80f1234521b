"""The trial loop: Optuna's `study.optimize` asks for values, tuneloop guards the budget, runs the trial through
an executor (a real recipe run, or a row of a recorded table in the benchmark), lets it report intermediate scores
for pruning, and records what it cost — whether it finished, was pruned, or failed.

A failed trial (out of memory, NaN loss, a crash) is told to Optuna as complete with a violated constraint
(`trial.set_constraint`) and the cost it spent, so TPE/NSGA-II/GP learn to avoid that region (Optuna's samplers only
read constraints of complete trials); its reason stays on the trial. The budget is checked before a trial
(predicted cost against what is left, counting what other workers' running trials are still expected to spend) and
while it runs (its measured spend plus the expected evaluation), so a sweep stops within its budget even when a
prediction was wrong.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneloop import extras
from tuneloop.config.sweep import Sweep, duration_s
from tuneloop.errors import RunStopped, TuneloopError
from tuneloop.sweep import budget as B
from tuneloop.sweep.pruning import dominated, optuna_pruner
from tuneloop.sweep.space import make_sampler, override, suggest

HEARTBEAT_S = 60
BUDGET_STOP = "stopped by the budget"
REFUSALS = 5  # predicted-cost refusals in a row before the sweep stops (the sampler may offer a cheaper trial)
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # where a trial runs, for `sweep status` and the kill tests


@dataclass
class Outcome:
    """What an executor returns for a finished trial."""

    values: dict[str, float]  # metric objective -> value
    cost: dict[str, float]  # money, device_hours: the whole trial
    train_cost: dict[str, float] | None = None
    eval_cost: dict[str, float] | None = None
    trained_examples: int | None = None
    steps: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # run_dir, mlflow_run_id, ...


class TrialFailed(Exception):
    """An executor's trial failed for a reason worth recording (out of memory, NaN loss, a crash)."""

    def __init__(self, reason: str, spent: dict[str, float], extra: dict[str, Any] | None = None):
        super().__init__(reason)
        self.reason, self.spent, self.extra = reason, spent, extra or {}


class NotStarted(Exception):
    """The budget (money, device-hours or trials) has no room for this trial; the sweep stops."""


class TrialContext:
    """Handed to the executor: the trial's values, and `report`/`spend` that may stop it (RunStopped)."""

    def __init__(self, loop: SweepLoop, trial: Any, params: dict[str, Any], eval_cost: dict[str, float]):
        self.loop, self.trial, self.params = loop, trial, params
        self.number: int = trial.number
        self.eval_cost = eval_cost
        self.spent = B.zero()
        self.progress: list[list[float | None]] = []

    def overrides(self) -> list[str]:

        return [override(k, v) for k, v in self.params.items()]

    def spend(self, spent: dict[str, float]) -> None:
        """Record what the trial has cost so far; stop it when going on until the next update (which costs about
        what the last interval did) and then evaluating would overrun the budget."""
        step = {k: max(0.0, spent[k] - self.spent[k]) for k in B.KEYS}
        self.spent = dict(spent)
        self.trial.set_user_attr("spent", {"trial": self.number, **self.spent})
        others = self.loop.others_spent(self.number)
        reason = B.over(self.loop.sweep.budget, B.add(B.add(B.add(others, self.spent), step), self.eval_cost))
        if reason:
            raise RunStopped(f"{BUDGET_STOP}: going on would overrun it ({reason})")

    def report(self, step: int, value: float | None, spent: dict[str, float]) -> None:
        """An intermediate score at optimizer step `step`; stops the trial when the pruning rule says so."""
        self.progress.append([step, value, spent["money"], spent["device_hours"]])
        self.trial.set_user_attr("progress", self.progress)
        self.spend(spent)
        if value is None or step < self.loop.warmup:
            return
        rule = self.loop.rule
        if rule in ("hyperband", "successive_halving", "median"):
            self.trial.report(value, step)
            if self.trial.should_prune():
                raise RunStopped(f"pruned at step {step} by {rule} ({value:.4g})")
        elif rule == "pareto":
            others = [t for t in self.loop.trials() if t.number != self.number]
            key = self.loop.cost_key
            by = dominated(value, spent[key], step, others, self.loop.maximize, self.loop.sweep.pruning.min_dominating)
            if by:
                shown = ", ".join(f"#{n}" for n in by[:5])
                raise RunStopped(
                    f"pruned at step {step}: {value:.4g} for {spent[key]:.3g} {key} is dominated by {shown}"
                )


Executor = Callable[[TrialContext], Outcome]


class SweepLoop:
    """One worker's loop over trials of a study (several workers share the study through its storage)."""

    def __init__(
        self,
        sweep: Sweep,
        space: dict[str, Any],
        study: Any,
        executor: Executor,
        planned_examples: Callable[[dict[str, Any]], int | None] = lambda _p: None,
        say: Callable[[str], None] = print,
        collect_garbage: bool = True,
    ):
        """`collect_garbage`: a full gc after each trial frees a trained model's reference cycles; replayed trials
        hold no model, and in a process that holds many objects the collection costs more than the trial."""
        self.sweep, self.space, self.study, self.executor = sweep, space, study, executor
        self.collect_garbage = collect_garbage
        self.planned_examples = planned_examples
        self.say = say
        self.rule = sweep.pruning_rule()
        self.warmup = sweep.pruning.warmup_steps if sweep.pruning else 0
        first = sweep.metric_objectives()[0]
        self.maximize = first.direction == "maximize"
        cost = sweep.cost_objective()
        self.cost_key = cost.cost if cost and cost.cost else "money"
        self._refused = 0  # trials refused in a row because their predicted cost did not fit

    # ------------------------------------------------------------------ study state

    def trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    def others_spent(self, number: int) -> dict[str, float]:
        trials = self.trials()
        return B.add(B.total_spent(trials, exclude=number), B.reserved(trials, exclude=number))

    # ------------------------------------------------------------------ running

    def run(self, n_trials: int | None = None) -> None:
        """Trials until the budget, the grid or `n_trials` (this worker) ends; Ctrl-C leaves a resumable study."""
        import optuna

        # a trial the budget refuses ends as FAIL through `catch`; Optuna would log it with a traceback
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        timeout = duration_s(self.sweep.budget.wall_time) if self.sweep.budget.wall_time else None
        self.study.optimize(
            self.objective, n_trials=n_trials, timeout=timeout, catch=(NotStarted,), gc_after_trial=self.collect_garbage
        )

    def objective(self, trial: Any) -> tuple[float, ...] | float:

        trials = self.trials()
        params = suggest(trial, self.space)
        trial.set_user_attr("spent", {"trial": trial.number, **B.zero()})
        trial.set_user_attr("progress", [])
        trial.set_user_attr("worker", WORKER)
        budget = self.sweep.budget
        if budget.trials is not None and B.started(trials, exclude=trial.number) >= budget.trials:
            self._not_started(trial, f"the trial budget ({budget.trials}) is used")
        already = B.add(B.total_spent(trials, trial.number), B.reserved(trials, trial.number))
        model = B.CostModel.from_trials(trials)
        examples = self.planned_examples(params)
        predicted = model.predict(examples)
        trial.set_user_attr("planned_examples", examples)
        if predicted is not None:
            trial.set_user_attr("predicted", predicted)
            reason = B.over(budget, B.add(already, predicted))
            if reason:
                self._refused += 1
                # a cheaper trial may still fit: ask the sampler again a few times before the sweep stops
                final = self._refused >= REFUSALS
                self._not_started(trial, f"its predicted cost would overrun the budget ({reason})", final)
        elif B.over(budget, already):
            self._not_started(trial, f"the budget is spent ({B.over(budget, already)})")
        self._refused = 0
        shown = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in params.items())
        guess = f" (predicted {predicted[self.cost_key]:.3g} {self.cost_key})" if predicted else ""
        self.say(f"[bold]trial {trial.number}[/]: {shown}{guess}")
        ctx = TrialContext(self, trial, params, model.evaluation_cost())
        started = time.time()
        try:
            outcome = self.executor(ctx)
        except RunStopped as e:
            self._record(trial, "pruned", str(e), ctx.spent, started)
            self.say(f"trial {trial.number}: {e}")
            if str(e).startswith(BUDGET_STOP):
                self.study.stop()  # what is left would not pay for another trial either
            import optuna

            raise optuna.TrialPruned(str(e)) from None
        except KeyboardInterrupt:
            self._record(trial, "interrupted", "interrupted (Ctrl-C); run the sweep again to go on", ctx.spent, started)
            raise
        except TrialFailed as e:
            self._record(trial, "failed", e.reason, B.add(e.spent, B.zero()), started, e.extra)
            trial.set_constraint("failed", 1.0)
            self.say(f"[yellow]trial {trial.number} failed[/]: {e.reason}")
            return self._values(None, e.spent)
        self._record(trial, "complete", None, outcome.cost, started, outcome.extra)
        trial.set_constraint("failed", 0.0)
        for k, v in (
            ("train_cost", outcome.train_cost),
            ("eval_cost", outcome.eval_cost),
            ("trained_examples", outcome.trained_examples),
            ("steps", outcome.steps),
            ("values", outcome.values),
        ):
            if v is not None:
                trial.set_user_attr(k, v)
        values = self._values(outcome.values, outcome.cost)
        shown = ", ".join(
            f"{o.label()} {_short(v)}" for o, v in zip(self.sweep.objectives, _tuple(values), strict=True)
        )
        self.say(f"trial {trial.number} finished: {shown}")
        return values

    def _not_started(self, trial: Any, reason: str, final: bool = True) -> None:
        trial.set_user_attr("outcome", "not started")
        trial.set_user_attr("reason", reason)
        if final:
            self.say(f"not starting trial {trial.number}: {reason}; the sweep stops")
            self.study.stop()
        else:
            self.say(f"not starting trial {trial.number}: {reason}; asking for another")
        raise NotStarted(reason)

    def _record(
        self,
        trial: Any,
        outcome: str,
        reason: str | None,
        spent: dict[str, float],
        started: float,
        extra: dict[str, Any] | None = None,
    ) -> None:
        trial.set_user_attr("spent", {"trial": trial.number, **{k: float(spent.get(k, 0.0)) for k in B.KEYS}})
        trial.set_user_attr("outcome", outcome)
        trial.set_user_attr("wall_s", time.time() - started)
        if reason:
            trial.set_user_attr("reason", reason)
        for k, v in (extra or {}).items():
            trial.set_user_attr(k, v)

    def _values(self, metrics: dict[str, float] | None, cost: dict[str, float]) -> tuple[float, ...] | float:
        """Objective values in the sweep's order. A failed trial gets the worst value seen so far (it is infeasible
        anyway: samplers rank it behind every feasible trial) and the cost it spent."""
        out = []
        for i, o in enumerate(self.sweep.objectives):
            if o.cost:
                out.append(float(cost.get(o.cost, 0.0)))
            elif metrics is not None and metrics.get(o.label()) is not None and math.isfinite(metrics[o.label()]):
                out.append(float(metrics[o.label()]))
            else:
                seen = [t.values[i] for t in self.trials() if t.state.name == "COMPLETE" and t.values]
                worst = (min(seen) if o.direction == "maximize" else max(seen)) if seen else 0.0
                out.append(float(worst))
        return out[0] if len(out) == 1 else tuple(out)


def open_study(
    sweep: Sweep, space: dict[str, Any], name: str, storage: Any, *, create: bool = True, max_steps: int | None = None
) -> Any:
    """Create the sweep's study or load it (resume, or another worker); refuses a study of the same name whose
    objectives differ."""
    import optuna

    directions = [o.direction for o in sweep.objectives]
    sampler = make_sampler(sweep, space)
    pruner = optuna_pruner(sweep.pruning_rule(), sweep.pruning, max_steps)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not create:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    study = optuna.create_study(
        study_name=name, storage=storage, directions=directions, sampler=sampler, pruner=pruner, load_if_exists=True
    )
    recorded = study.user_attrs.get("objectives")
    labels = [o.label() for o in sweep.objectives]
    if recorded is not None and recorded != labels:
        raise TuneloopError(
            f"a sweep named {name!r} already exists with objectives {recorded}, not {labels}; give the sweep another "
            "`name` (or delete the study) to start afresh"
        )
    if recorded is None:
        study.set_user_attr("objectives", labels)
        study.set_user_attr("directions", directions)
        study.set_user_attr("sweep", json.loads(sweep.model_dump_json(by_alias=True, exclude_none=True)))
    return study


def open_storage(url: str, heartbeat_s: int | None = HEARTBEAT_S) -> Any:
    """Optuna's RDB storage with heartbeats: a trial whose worker died (SIGKILL, lost machine) is marked failed after
    `3 × heartbeat` and retried once with the same values. `postgresql://` uses psycopg 3."""
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats: experimental in name only since 2.8

    if url.startswith("postgresql"):
        extras.need("postgres", "a postgresql:// sweep storage")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat_s:
        kwargs.update(
            heartbeat_interval=heartbeat_s,
            grace_period=3 * heartbeat_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    for attempt in range(5):
        try:
            return RDBStorage(url, **kwargs)
        except Exception as e:  # workers starting together race to create Optuna's tables: the loser retries
            from sqlalchemy.exc import IntegrityError, ProgrammingError

            if not isinstance(e, IntegrityError | ProgrammingError) or attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _tuple(values: tuple[float, ...] | float) -> tuple[float, ...]:
    return values if isinstance(values, tuple) else (values,)
