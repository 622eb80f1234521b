"""Sweeps: search spaces validated against the recipe, the budget guard, the Pareto pruning rule, failures as
constraints, resume, and the rule that picks the best trial — through the real trial loop and Optuna, with trials
replayed from a recorded table (the live executor is exercised by the smoke sweep at the end)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest

from tuneloop.config.errors import RecipeError
from tuneloop.config.sweep import Sweep
from tuneloop.sweep import budget as B
from tuneloop.sweep.engine import SweepLoop, open_storage, open_study
from tuneloop.sweep.pruning import dominated
from tuneloop.sweep.replay import TableExecutor
from tuneloop.sweep.report import choose, pareto_front, trial_rows, write_report
from tuneloop.sweep.spec import load_sweep

LRS = [1e-4, 3e-4, 1e-3, 3e-3]
BATCHES = [2, 4, 8]
STEPS = [2, 4, 6, 8]


def _table(fail: tuple | None = None) -> dict:
    """A grid where quality peaks at lr 1e-3 and grows with batch size, and cost grows with batch size."""
    configs = []
    for lr in LRS:
        for bs in BATCHES:
            final = 30 - 6 * abs(math.log10(lr) + 3) + 2 * math.log2(bs)
            per_step = 0.001 * bs
            progress = [[s, final * s / 8, per_step * s, per_step * s / 0.085] for s in STEPS]
            cost = per_step * 8 + 0.002
            config = {
                "params": {"lr": lr, "bs": bs},
                "progress": progress,
                "values": {"synopsis/rougeL": final},
                "cost": {"money": cost, "device_hours": cost / 0.085},
                "train_cost": {"money": per_step * 8, "device_hours": per_step * 8 / 0.085},
                "eval_cost": {"money": 0.002, "device_hours": 0.002 / 0.085},
                "trained_examples": 8 * bs,
            }
            if fail == (lr, bs):
                config["failed"] = "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)"
                config["progress"] = progress[:1]
                config["cost"] = {"money": progress[0][2], "device_hours": progress[0][3]}
            configs.append(config)
    return {"configs": configs}


def _sweep(**over) -> Sweep:
    body = {
        "objectives": [{"metric": "synopsis/rougeL"}, {"cost": "money"}],
        "budget": {"trials": 12},
        "pruning": {"every_steps": 2},
        "startup_trials": 3,
    }
    body.update(over)
    return Sweep.model_validate(body)


def _run(sweep: Sweep, table: dict, storage=None, name="s", n_trials=None):
    executor = TableExecutor(table)
    study = open_study(sweep, executor.space(), name, storage or optuna.storages.InMemoryStorage())
    loop = SweepLoop(
        sweep, executor.space(), study, executor, executor.planned_examples, say=lambda _m: None, collect_garbage=False
    )
    loop.run(n_trials)
    return study


def _spent(study) -> dict:
    return B.total_spent(study.get_trials(deepcopy=False))


# ---------------------------------------------------------------- validation


SWEEP_RECIPE = """
name: s
base_model: {model}
data: {{source: debian-descriptions, task: synopsis, max_train_rows: 16}}
stages:
  - name: sft
    method: sft
    args: {{learning_rate: 1.0e-3, max_steps: 2, per_device_train_batch_size: 2}}
evaluation:
  tasks:
    - {{name: synopsis, split: test, max_rows: 4, metrics: [rougeL]}}
  baseline: null
sweep:
  space:
{space}
  objectives: [{{metric: {metric}}}, {{cost: money}}]
  budget: {{money: 1.0}}
"""


def _recipe(write, tiny_model, space: str, metric: str = "synopsis/rougeL"):
    return write("s.yaml", SWEEP_RECIPE.format(model=tiny_model, space=space, metric=metric))


@pytest.mark.parametrize(
    ("space", "needle"),
    [
        ("    stages.sft.args.learnin_rate: {loguniform: [1.0e-5, 1.0e-3]}", "did you mean learning_rate"),
        ("    stages.sfx.args.learning_rate: {loguniform: [1.0e-5, 1.0e-3]}", "no stage named 'sfx'"),
        ("    stages.sft.args.learning_rate: {loguniform: [1.0e-3, 1.0e-5]}", "empty range"),
        ("    stages.sft.args.learning_rate: {loguniform: [0, 1.0e-3]}", "a log range needs low > 0"),
        ("    stages.sft.args.per_device_train_batch_size: {categorical: []}", "no values to choose from"),
        ("    stages.sft.args.learning_rate: {categorical: [fast, slow]}", "value 'fast'"),
        ("    stages.sft.args.learning_rate: {uniform: [1, 2], categorical: [1]}", "exactly one of"),
    ],
)
def test_bad_search_space_fails_at_validation_with_its_line(write, tiny_model, space, needle):
    path = _recipe(write, tiny_model, space)
    with pytest.raises(RecipeError) as e:
        load_sweep(path)
    text = str(e.value)
    assert needle in text
    assert f"{path.name}:14 sweep.space." in text, text  # the line of the space key


def test_unknown_objective_metric_lists_what_the_evaluation_computes(write, tiny_model):
    path = _recipe(write, tiny_model, "    stages.sft.args.learning_rate: {loguniform: [1.0e-5, 1.0e-3]}", "bleu")
    with pytest.raises(RecipeError) as e:
        load_sweep(path)
    assert "'bleu' is not computed by the recipe's evaluation; available: synopsis/rougeL" in str(e.value)


def test_a_valid_space_loads(write, tiny_model):
    spec = load_sweep(_recipe(write, tiny_model, "    stages.sft.args.learning_rate: {loguniform: [1.0e-5, 1.0e-3]}"))
    assert spec.name == "s" and list(spec.space) == ["stages.sft.args.learning_rate"]


REPO = Path(__file__).parents[2]
SHIPPED = [REPO / "recipes" / "sweep.yaml", *sorted((REPO / "configs" / "sweeps").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_sweep_validates_against_its_recipe(path):
    spec = load_sweep(path)
    assert spec.space and spec.sweep.budget


def test_validate_checks_a_sweep_file_with_its_recipe(write, tiny_model):
    from typer.testing import CliRunner

    from tuneloop.cli import app

    path = _recipe(write, tiny_model, "    stages.sft.args.learnin_rate: {loguniform: [1.0e-5, 1.0e-3]}")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "did you mean learning_rate" in result.output


def test_default_space_puts_the_lora_learning_rate_ten_times_higher(write, tiny_model):
    from tuneloop.recipes import load_recipe
    from tuneloop.sweep.space import default_space

    path = _recipe(write, tiny_model, "    {}").read_text().replace("  space:\n    {}\n", "")
    full = load_recipe(write("full.yaml", path))
    lora_text = path.replace("method: sft\n", "method: sft\n    peft: {type: lora}\n")
    lora = load_recipe(write("lora.yaml", lora_text))
    f, lo = default_space(full), default_space(lora)
    key = "stages.sft.args.learning_rate"
    assert lo[key].loguniform == pytest.approx([x * 10 for x in f[key].loguniform])
    assert "stages.sft.peft.r" in lo and "stages.sft.peft.r" not in f


# ---------------------------------------------------------------- budget


def test_budget_guard_never_overruns_and_refuses_a_trial_it_cannot_afford():
    table = _table()
    grid_cost = sum(c["cost"]["money"] for c in table["configs"])
    for seed in range(5):
        budget = 0.3 * grid_cost
        study = _run(_sweep(budget={"money": budget}, seed=seed, pruning=None), table)
        spent = _spent(study)["money"]
        assert spent <= 1.05 * budget, (seed, spent, budget)
        last = study.trials[-1].user_attrs  # the sweep ends by refusing a trial, or by stopping one in time
        assert "would overrun the budget" in last["reason"] or last["reason"].startswith("stopped by the budget")


def test_a_running_trial_is_stopped_when_finishing_it_would_overrun():
    """The first trial has no cost model to predict from: the in-trial guard alone keeps the sweep in budget."""
    sweep = _sweep(budget={"money": 0.03}, pruning=None)
    executor = TableExecutor(_table())
    study = open_study(sweep, executor.space(), "s", optuna.storages.InMemoryStorage())
    study.enqueue_trial({"lr": 1e-3, "bs": 8})  # costs 0.066 in full
    SweepLoop(
        sweep, executor.space(), study, executor, executor.planned_examples, say=lambda _m: None, collect_garbage=False
    ).run()
    first = study.trials[0]
    assert first.state.name == "PRUNED" and first.user_attrs["reason"].startswith("stopped by the budget")
    assert _spent(study)["money"] <= 0.03 * 1.05


def test_trial_budget_counts_started_trials():
    study = _run(_sweep(budget={"trials": 5}, pruning=None), _table())
    assert B.started(study.trials) == 5


def test_cost_model_predicts_from_measured_cost_per_example():
    study = _run(_sweep(budget={"trials": 3}, pruning=None), _table())
    model = B.CostModel.from_trials(study.trials)
    predicted = model.predict(8 * 8)
    assert predicted["money"] == pytest.approx(0.001 * 8 * 8 + 0.002)


# ---------------------------------------------------------------- pruning


def _trial(number, progress):
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, values=[0.0, 0.0], user_attrs={"progress": progress}
    ), number


def test_pareto_rule_stops_only_a_trial_beaten_by_one_that_cost_no_more():
    made = []
    for n, (value, cost) in enumerate([(10.0, 1.0), (12.0, 2.0)]):
        t, _ = _trial(n, [[4, value, cost, cost]])
        t.number = n
        made.append(t)
    # worse and dearer than #0: dominated
    assert dominated(9.0, 1.5, 4, made, maximize=True, min_dominating=1) == [0]
    # cheaper than both, even though worse: on the front, kept
    assert dominated(5.0, 0.5, 4, made, maximize=True, min_dominating=1) == []
    # better than #0 though dearer, beaten by #1 only at a higher cost: kept
    assert dominated(11.0, 1.5, 4, made, maximize=True, min_dominating=1) == []
    # other trials at another step are not comparable
    assert dominated(1.0, 9.0, 6, made, maximize=True, min_dominating=1) == []
    # two dominating trials required
    assert dominated(9.0, 3.0, 4, made, maximize=True, min_dominating=2) == [0, 1]
    assert dominated(9.0, 1.5, 4, made, maximize=True, min_dominating=2) == []


def test_multi_objective_sweep_prunes_dominated_trials_at_equal_steps():
    study = _run(_sweep(budget={"trials": 12}, sampler="random", seed=3), _table())
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, "some trials of a random sweep are dominated early"
    for t in pruned:
        assert "is dominated by #" in t.user_attrs["reason"]
        # a pruned trial paid for its steps only, not for the remaining steps and the evaluation
        last = t.user_attrs["progress"][-1]
        assert B.spent_of(t)["money"] == pytest.approx(last[2])
    assert len(trial_rows(study, _sweep())) == len(study.trials)


def test_single_objective_sweep_uses_optunas_pruner():
    sweep = _sweep(objectives=[{"metric": "synopsis/rougeL"}], pruning={"every_steps": 2, "rule": "median"})
    study = _run(sweep, _table(), n_trials=12)
    assert any(t.intermediate_values for t in study.trials)
    assert any(t.state.name == "PRUNED" and "by median" in t.user_attrs["reason"] for t in study.trials)


def test_optuna_pruners_are_refused_for_several_objectives():
    with pytest.raises(ValueError, match="one objective only"):
        _sweep(pruning={"every_steps": 2, "rule": "hyperband"})


# ---------------------------------------------------------------- failures, retries, resume


def test_failed_trial_is_recorded_with_its_reason_paid_once_and_infeasible_to_the_sampler():
    table = _table(fail=(1e-3, 8))
    sweep = _sweep(sampler="grid", pruning=None, budget={"trials": 12})
    study = _run(sweep, table)
    failed = [t for t in study.trials if t.params == {"lr": 1e-3, "bs": 8}]
    assert len(failed) == 1
    t = failed[0]
    assert t.state.name == "COMPLETE" and t.user_attrs["outcome"] == "failed"
    assert t.user_attrs["reason"].startswith("out of memory")
    assert t.constraints == {"failed": 1.0}
    assert all(o.constraints == {"failed": 0.0} for o in study.trials if o.user_attrs["outcome"] == "complete")
    expected = sum(c["cost"]["money"] for c in table["configs"])
    assert _spent(study)["money"] == pytest.approx(expected)
    best, _ = choose(trial_rows(study, sweep), sweep)
    assert best["params"] != {"lr": 1e-3, "bs": 8}


def test_a_retried_trial_does_not_count_the_killed_trials_spend_twice():
    study = optuna.create_study(directions=["maximize", "minimize"])
    killed = optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL, user_attrs={"spent": {"trial": 0, "money": 0.5, "device_hours": 1.0}}
    )
    study.add_trial(killed)
    retry = optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, user_attrs=dict(killed.user_attrs))
    study.add_trial(retry)
    assert B.total_spent(study.get_trials())["money"] == pytest.approx(0.5)


def test_resumed_sweep_keeps_finished_trials_and_does_not_pay_for_them_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    table = _table()
    first = _run(_sweep(budget={"trials": 4}, pruning=None), table, open_storage(url, None))
    spent_before = _spent(first)["money"]
    done_before = {t.number: t.params for t in first.trials}
    again = _run(_sweep(budget={"trials": 7}, pruning=None), table, open_storage(url, None))
    assert B.started(again.trials) == 7
    assert {t.number: t.params for t in again.trials[: len(done_before)]} == done_before
    new = sum(B.spent_of(t)["money"] for t in again.trials[len(done_before) :])
    assert _spent(again)["money"] == pytest.approx(spent_before + new)


def test_a_study_with_other_objectives_is_not_resumed_by_mistake(tmp_path):
    from tuneloop.errors import TuneloopError

    storage = open_storage(f"sqlite:///{tmp_path / 'sweeps.db'}", None)
    _run(_sweep(budget={"trials": 1}, pruning=None), _table(), storage)
    with pytest.raises(TuneloopError, match="already exists with objectives"):
        open_study(_sweep(objectives=[{"metric": "synopsis/rougeL"}]), {}, "s", storage)


# ---------------------------------------------------------------- picking and reporting


def test_best_rules_pick_from_the_front(tmp_path):
    sweep = _sweep(sampler="grid", pruning=None, budget={"trials": 12})
    study = _run(sweep, _table())
    rows = trial_rows(study, sweep)
    front = pareto_front(rows, sweep)
    costs = [r["cost"]["money"] for r in front]
    assert costs == sorted(costs) and len(front) >= 2
    top, words = choose(rows, sweep)
    assert top["params"] == {"lr": 1e-3, "bs": 8} and words == "highest synopsis/rougeL"
    cheap, words = choose(rows, sweep, max_cost=0.02)
    assert cheap["cost"]["money"] <= 0.02 and cheap["params"] == {"lr": 1e-3, "bs": 2}
    close, words = choose(rows, sweep, within=2.5)
    assert words.startswith("cheapest within 2.5")
    assert top["values"]["synopsis/rougeL"] - close["values"]["synopsis/rougeL"] <= 2.5
    assert close["cost"]["money"] < top["cost"]["money"]
    folder = write_report(study, tmp_path, sweep)
    for name in ("report.html", "report.json", "pareto.png", "history.png", "cost.png", "importance.png"):
        assert (folder / name).stat().st_size > 0, name
    report = json.loads((folder / "report.json").read_text())
    assert report["best"]["trial"] == top["number"]
    assert "<script" not in (folder / "report.html").read_text()


def test_local_workers_split_the_cores_unless_omp_num_threads_is_set(monkeypatch):
    import os

    import torch

    from tuneloop.sweep.runner import share_cores

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # unset, and restored after the test whatever share_cores sets
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    said: list[str] = []
    try:
        assert share_cores(1, said.append) is None and not os.environ["OMP_NUM_THREADS"]  # one worker: all cores
        assert share_cores(3, said.append) == 2  # 8 cores, 3 workers
        assert os.environ["OMP_NUM_THREADS"] == "2" and torch.get_num_threads() == 2
        assert said == ["3 workers on 8 cores: 2 torch thread(s) each (set OMP_NUM_THREADS to choose)"]
        monkeypatch.setenv("OMP_NUM_THREADS", "5")
        assert share_cores(4, said.append) is None and os.environ["OMP_NUM_THREADS"] == "5"  # the user's choice
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert share_cores(2, said.append) == 1  # never zero threads
    finally:
        torch.set_num_threads(before)
