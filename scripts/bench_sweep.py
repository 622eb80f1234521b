"""Tabular benchmark of sweep strategies (as HPOBench and YAHPO do it).

1. `grid`: run recipes/sweep.yaml's whole grid once for real, through `tuneloop sweep` itself (grid sampler, no
   pruning, intermediate ROUGE-L every 2 steps), and save every configuration's scores at each step, its final
   ROUGE-L and its measured cost as docs/bench/sweep-grid.json.
2. `replay`: replay against that table, over many seeds, tuneloop's cost-aware sweep (ROUGE-L and money as
   objectives, TPE, Pareto pruning, a money budget), NSGA-II in its place, Optuna TPE with Hyperband (one
   objective), random search, and the grid itself; report the share of the grid's best ROUGE-L reached and the share
   of its cost spent (median and range), append the table to docs/benchmarks.md and plot docs/img/sweep-bench.png.

    python scripts/bench_sweep.py grid      # about 20 minutes on 2 CPU cores
    python scripts/bench_sweep.py grid docs/bench/other.json sweep.grid_points=6   # another grid (overrides)
    python scripts/bench_sweep.py rerun 0 2 # measure configurations 0 and 2 again (taken on a busy machine)
    python scripts/bench_sweep.py replay [TABLE]   # seconds
    (docs/sweeps.md has the command for a larger grid on a GPU)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "sweep.yaml"
TABLE = ROOT / "docs" / "bench" / "sweep-grid.json"
METRIC = "synopsis/rougeL"
SEEDS = 20
BUDGET_SHARE = 0.3  # the money budget of the budgeted strategies: 30% of the grid's cost


SETS = [
    "sweep.sampler=grid",
    "sweep.grid_points=4",
    "sweep.pruning.rule=none",
    "sweep.budget.money=100",
    "sweep.budget.trials=100",
]


def grid(out: Path, extra: list[str]) -> None:
    """`extra`: more --set overrides (e.g. sweep.grid_points=6, evaluation.tasks.synopsis.max_rows=48)."""
    from tuneloop.sweep.runner import run_sweep
    from tuneloop.sweep.space import grid_size
    from tuneloop.sweep.spec import load_sweep

    sets = [f"sweep.name=bench-{out.stem}", *SETS, *extra]
    spec = load_sweep(RECIPE, sets)
    print(f"grid of {grid_size(spec.space, spec.sweep.grid_points)} configurations: {spec.space}")
    started = time.time()
    study = run_sweep(spec, overrides=sets, say=print)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = {
        "recipe": "recipes/sweep.yaml",
        "overrides": extra,
        "metric": METRIC,
        "machine": _machine(),
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": time.time() - started,
        "configs": _configs(study),
    }
    out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{len(table['configs'])} configurations in {time.time() - started:.0f} s -> {out}")


def rerun(indexes: list[int]) -> None:
    """Measure some configurations again (e.g. ones whose cost was measured while the machine was busy with
    other work) and replace them in the table; the table records which were re-measured."""
    from tuneloop.sweep.runner import run_sweep
    from tuneloop.sweep.spec import load_sweep

    table = json.loads(TABLE.read_text())
    sets = [
        f"sweep.name=bench-rerun-{int(time.time())}",
        *SETS,
        f"sweep.budget.trials={len(indexes)}",
        "sweep.sampler=random",
    ]
    spec = load_sweep(RECIPE, sets)
    from tuneloop.sweep.engine import open_storage, open_study
    from tuneloop.sweep.runner import default_storage

    study = open_study(spec.sweep, spec.space, spec.name, open_storage(default_storage(), None))
    for i in indexes:
        study.enqueue_trial(table["configs"][i]["params"])
    study = run_sweep(spec, overrides=sets, say=print)
    fresh = {json.dumps(c["params"], sort_keys=True): c for c in _configs(study)}
    for i in indexes:
        key = json.dumps(table["configs"][i]["params"], sort_keys=True)
        table["configs"][i] = {**fresh[key], "remeasured": time.strftime("%Y-%m-%d %H:%M")}
    TABLE.write_text(json.dumps(table, indent=1) + "\n")


def _configs(study) -> list[dict]:
    configs = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if a.get("outcome") not in ("complete", "failed"):
            continue
        configs.append(
            {
                "params": dict(t.params),
                "progress": a.get("progress") or [],
                "values": a.get("values") or {},
                "cost": {k: v for k, v in a["spent"].items() if k != "trial"},
                "train_cost": a.get("train_cost"),
                "eval_cost": a.get("eval_cost"),
                "trained_examples": a.get("trained_examples"),
                **({"failed": a["reason"]} if a.get("outcome") == "failed" else {}),
            }
        )
    return configs


def strategies(grid_cost: float, every: int = 2) -> dict[str, dict]:
    """`every`: the steps between the table's intermediate scores, where the pruners look."""
    budget = {"money": BUDGET_SHARE * grid_cost}
    cost_aware = {
        "objectives": [{"metric": METRIC}, {"cost": "money"}],
        "budget": budget,
        "pruning": {"every_steps": every, "rule": "pareto"},
        "startup_trials": 3,
    }
    return {
        "tuneloop (TPE, quality+cost, Pareto pruning)": cost_aware,
        "tuneloop, NSGA-II instead of TPE": {**cost_aware, "sampler": "nsga2"},
        "tuneloop, no pruning": {**cost_aware, "pruning": None},
        "Optuna TPE + Hyperband (one objective)": {
            "objectives": [{"metric": METRIC}],
            "budget": budget,
            "pruning": {"every_steps": every, "rule": "hyperband"},
            "startup_trials": 3,
        },
        "random search": {"objectives": [{"metric": METRIC}], "budget": budget, "sampler": "random"},
    }


def replay(path: Path) -> None:
    import optuna

    from tuneloop.config.sweep import Sweep
    from tuneloop.sweep import budget as B
    from tuneloop.sweep.engine import SweepLoop, open_study
    from tuneloop.sweep.replay import TableExecutor

    table = json.loads(path.read_text())
    executor = TableExecutor(table)
    finished = [c for c in table["configs"] if not c.get("failed")]
    best = max(c["values"][METRIC] for c in finished)
    grid_cost = sum(c["cost"]["money"] for c in table["configs"])
    results: dict[str, list[tuple[float, float, int, int]]] = {}
    every = min((c["progress"][0][0] for c in table["configs"] if c.get("progress")), default=2)
    for label, body in strategies(grid_cost, int(every)).items():
        for seed in range(SEEDS):
            sweep = Sweep.model_validate({**body, "seed": seed})
            study = open_study(sweep, executor.space(), f"r{seed}", optuna.storages.InMemoryStorage())
            SweepLoop(
                sweep,
                executor.space(),
                study,
                executor,
                executor.planned_examples,
                say=lambda _m: None,
                collect_garbage=False,
            ).run()
            trials = study.get_trials(deepcopy=False)
            found = [t.user_attrs["values"][METRIC] for t in trials if t.user_attrs.get("outcome") == "complete"]
            spent = B.total_spent(trials)["money"]
            pruned = sum(t.state.name == "PRUNED" for t in trials)
            results.setdefault(label, []).append(
                (max(found or [0.0]) / best, spent / grid_cost, B.started(trials), pruned)
            )
    results["grid (every configuration)"] = [(1.0, 1.0, len(table["configs"]), 0)]
    lines = _markdown(table, results, best, grid_cost)
    print("\n".join(lines))
    _plot(results)
    with (ROOT / "docs" / "benchmarks.md").open("a") as f:
        f.write("\n" + "\n".join(lines) + "\n")


def _markdown(table, results, best, grid_cost) -> list[str]:
    scores = [c["values"][METRIC] for c in table["configs"] if not c.get("failed")]
    near = sum(v >= 0.99 * best for v in scores)
    near95 = sum(v >= 0.95 * best for v in scores)
    steps = max((c["progress"][-1][0] for c in table["configs"] if c.get("progress")), default="?")

    def spread(xs: list[float]) -> str:
        return f"{100 * statistics.median(xs):.1f}% [{100 * min(xs):.1f}, {100 * max(xs):.1f}]"

    out = [
        f"## Sweep strategies replayed on a recorded grid ({time.strftime('%Y-%m-%d')}, scripts/bench_sweep.py)",
        "",
        f"Grid: {len(table['configs'])} configurations of {table['recipe']} "
        f"{' '.join(table.get('overrides') or [])} (learning rate × batch size, {steps} steps, ROUGE-L on the test "
        f"prompts), run once for real on {table['machine']} in {table['wall_s'] / 60:.0f} min; best ROUGE-L "
        f"{best:.2f}; {near} configuration(s) within 1% of it, {near95} within 5%; grid cost {grid_cost:.4f} USD. "
        "Budgeted strategies "
        f"get {100 * BUDGET_SHARE:.0f}% of the grid's cost; {SEEDS} seeds each; median [min, max].",
        "",
        "| strategy | share of the grid's best ROUGE-L | share of the grid's cost | trials | pruned | seeds ≥ 99% "
        "| seeds ≥ 95% |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, rows in results.items():
        q, c, n, p = zip(*rows, strict=True)
        hit, close = sum(x >= 0.99 for x in q), sum(x >= 0.95 for x in q)
        out.append(
            f"| {label} | {spread(list(q))} | {spread(list(c))} | {statistics.median(n):g} | "
            f"{statistics.median(p):g} | {hit}/{len(rows)} | {close}/{len(rows)} |"
        )
    return out


def _plot(results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, rows in results.items():
        q, c, _, _ = zip(*rows, strict=True)
        ax.scatter([100 * x for x in c], [100 * x for x in q], label=label, alpha=0.6, s=22)
    ax.axhline(99, ls="--", c="grey", lw=0.8)
    ax.axvline(30, ls="--", c="grey", lw=0.8)
    ax.set_xlabel("share of the grid's cost spent (%)")
    ax.set_ylabel("share of the grid's best ROUGE-L (%)")
    ax.set_title("sweep strategies on the recorded grid (one dot per seed)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.savefig(ROOT / "docs" / "img" / "sweep-bench.png", dpi=110, bbox_inches="tight")


def _machine() -> str:
    import os

    from tuneloop.tracking.context import hardware

    hw = hardware()
    if hw.get("gpu"):
        return f"{hw['gpus']}× {hw['gpu']} (CUDA {hw['cuda']}), {hw.get('cpu', 'CPU')} ({os.cpu_count()} cores)"
    return f"{hw.get('cpu', 'CPU')} ({os.cpu_count()} cores, no GPU)"


if __name__ == "__main__":
    verb, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("replay", [])
    if verb == "rerun":
        rerun([int(i) for i in args])
    elif verb == "grid":
        grid(Path(args[0]) if args and not args[0].startswith("--") else TABLE, [a for a in args if "=" in a])
    else:
        replay(Path(args[0]) if args else TABLE)
