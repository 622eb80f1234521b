"""`tuneloop sweep`: run a sweep (`tuneloop sweep RECIPE`), join one from another machine (`sweep worker`), and
read one (`status`, `best`, `report`). Heavy imports happen inside the verbs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneloop.cli.kit import JsonOpt, exit_with_problems, fail, implied_verb, needs_extra, out, print_json
from tuneloop.config.errors import RecipeError

app = typer.Typer(
    cls=implied_verb("run"),  # `tuneloop sweep RECIPE` is `tuneloop sweep run RECIPE`
    help="Cost-aware hyperparameter sweeps: `tuneloop sweep RECIPE` searches the recipe's `sweep:` space with "
    "Optuna within a budget; `status`, `best`, `report` read a sweep; `worker` joins one from another machine.",
    no_args_is_help=True,
)
app.callback()(needs_extra("sweep", "tuneloop sweep"))

SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a recipe key for every trial.")]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Optuna storage URL: `postgresql://user:pw@host/db` for workers on several machines (default: "
        "SQLite in the workspace, `.tuneloop/sweeps.db`).",
    ),
]
HeartbeatOpt = Annotated[
    int,
    typer.Option(
        "--heartbeat",
        help="Seconds between a running trial's heartbeats; a trial silent for 3× that is failed and retried.",
    ),
]


def _spec(path: Path, overrides: list[str] | None):
    from tuneloop.sweep.spec import load_sweep

    try:
        return load_sweep(path, overrides)
    except RecipeError as e:
        exit_with_problems(e, path)


@app.command("run")
def run(
    recipe: Annotated[Path, typer.Argument(help="A recipe with a `sweep:` section, or a configs/sweeps/*.yaml file.")],
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Worker processes on this machine.")] = 1,
    storage: StorageOpt = None,
    set_: SetOpt = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="Trials on a tiny random model (seconds each).")] = False,
    heartbeat: HeartbeatOpt = 60,
) -> None:
    """Run a sweep (or resume it: finished trials are kept and not paid for again) until its budget or search space
    is spent; then print the trials, the Pareto front and the best trial, and write report.html."""
    _go(recipe, workers, storage, set_, smoke, heartbeat, join=False)


@app.command("worker")
def worker(
    recipe: Annotated[Path, typer.Argument(help="The same recipe or sweep file as the sweep's.")],
    storage: Annotated[str, typer.Option("--storage", help="The sweep's storage URL (PostgreSQL).")],
    set_: SetOpt = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="As the sweep was started.")] = False,
    heartbeat: HeartbeatOpt = 60,
) -> None:
    """Join a sweep from this machine (or GPU): run its trials until its budget is spent. Start one per machine."""
    _go(recipe, 1, storage, set_, smoke, heartbeat, join=True)


def _go(recipe: Path, workers: int, storage: str | None, set_, smoke: bool, heartbeat: int, join: bool) -> None:
    from tuneloop.errors import TuneloopError
    from tuneloop.sweep.runner import run_sweep
    from tuneloop.train.progress import console

    spec = _spec(recipe, set_)
    if not join:
        console.rule(f"tuneloop sweep {spec.name}" + ("  (smoke)" if smoke else ""))
        _describe(spec)
    try:
        study = run_sweep(
            spec,
            storage_url=storage,
            workers=workers,
            overrides=set_ or [],
            smoke=smoke,
            heartbeat_s=heartbeat,
            join=join,
            say=lambda m: console.print(m, highlight=False),
        )
    except TuneloopError as e:
        fail(str(e), cause=e)
        return
    if not join:
        _show(study, spec.sweep, report=True)


def _describe(spec) -> None:
    from tuneloop.sweep.space import grid_size

    s = spec.sweep
    out.print(f"recipe {spec.recipe_path} · objectives {', '.join(f'{o.direction} {o.label()}' for o in s.objectives)}")
    out.print(
        f"budget {s.budget.model_dump(exclude_none=True)} · sampler {s.sampler_name()} · pruning "
        f"{s.pruning_rule()}" + (f" every {s.pruning.every_steps} steps" if s.pruning else "")
    )
    default = "" if s.space else " (the default space of the recipe's method)"
    out.print(f"space{default}:")
    for k, p in spec.space.items():
        out.print(f"  {k}: {p.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)}", markup=False)
    if s.sampler_name() == "grid":
        out.print(f"grid: {grid_size(spec.space, s.grid_points)} combinations")


def _load(name: str, storage: str | None):
    import optuna

    from tuneloop.config.sweep import Sweep
    from tuneloop.sweep.engine import open_storage
    from tuneloop.sweep.runner import default_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage or default_storage()
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, None))
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(url, None))]
        fail(f"no sweep named {name!r} in {url}; sweeps: {', '.join(names) or 'none'}", 2)
    return study, Sweep.model_validate(study.user_attrs["sweep"])


def _show(study: Any, sweep, report: bool = False, max_cost: float | None = None, within: float | None = None) -> Any:
    from tuneloop.sweep import budget as B
    from tuneloop.sweep.report import choose, cost_key, pareto_front, print_table, spent_summary, trial_rows

    rows = trial_rows(study, sweep)
    best, rule = choose(rows, sweep, max_cost, within)
    print_table(rows, sweep, out, best)
    key = cost_key(sweep)
    spent = spent_summary(rows)
    total = B.zero()
    for v in spent.values():
        total = B.add(total, v)
    limit = B.limit(sweep.budget).get(key)
    parts = ", ".join(f"{k} {v[key]:.4g}" for k, v in spent.items() if v[key])
    share = f" of {limit:g} ({100 * total[key] / limit:.0f}%)" if limit else ""
    out.print(f"spent {total[key]:.4g} {key}{share}: {parts or 'nothing yet'}")
    front = pareto_front(rows, sweep)
    if front:
        out.print("Pareto front: " + ", ".join(f"#{r['number']}" for r in front))
    if best:
        vals = ", ".join(f"{k} {v:.4g}" for k, v in best["values"].items())
        out.print(f"[bold]best[/] ({rule}): trial #{best['number']}: {vals}, {key} {best['cost'][key]:.4g}")
        out.print(f"  values: {', '.join(f'{k}={v}' for k, v in best['params'].items())}", markup=False)
        if best.get("run_dir"):
            out.print(f"  run: {best['run_dir']}", markup=False)
    else:
        out.print(f"no finished trial satisfies: {rule}")
    if report:
        from tuneloop.sweep.report import write_report
        from tuneloop.sweep.runner import sweep_dir

        folder = write_report(study, sweep_dir(study.study_name), sweep)
        out.print(f"report: {folder / 'report.html'}")
    return best


@app.command("status")
def status(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
) -> None:
    """Every trial of the sweep (running ones included): values, cost, outcome and why; what was spent."""
    study, sweep = _load(name, storage)
    if as_json:
        from tuneloop.sweep.report import trial_rows

        print(json.dumps({"sweep": name, "trials": trial_rows(study, sweep)}, indent=2, default=str))
        return
    _show(study, sweep)


@app.command("best")
def best(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    storage: StorageOpt = None,
    max_cost: Annotated[float | None, typer.Option("--max-cost", help="Only trials that cost at most this.")] = None,
    within: Annotated[
        float | None, typer.Option("--within", help="The cheapest trial within this many points of the best.")
    ] = None,
    register: Annotated[
        bool, typer.Option("--register", help="Register the trial's model as a challenger (the recipe's registry).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The trial picked by a rule ("highest rougeL under 2 USD": --max-cost 2; "cheapest within 0.5 points of the
    best": --within 0.5; default: the sweep's `best:`), optionally registered with the sweep in its lineage."""
    study, sweep = _load(name, storage)
    if as_json:
        from tuneloop.sweep.report import choose, trial_rows

        chosen, rule = choose(trial_rows(study, sweep), sweep, max_cost, within)
        print_json({"rule": rule, "trial": chosen})
    else:
        chosen = _show(study, sweep, max_cost=max_cost, within=within)
    if chosen is None:
        raise typer.Exit(1)
    if register:
        from tuneloop.errors import TuneloopError
        from tuneloop.sweep.registration import register_trial

        try:
            reg = register_trial(study, chosen, say=out.print)
        except TuneloopError as e:
            fail(str(e))
            return
        out.print(f"[bold]registered[/] {reg.uri} (@challenger) from sweep {name} trial #{chosen['number']}")
        out.print(f"next: tuneloop registry promote {reg.name} --version {reg.version}", markup=False)


@app.command("report")
def report(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    storage: StorageOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder (default: the sweep's).")] = None,
) -> None:
    """Write report.html with the Pareto front, history, parameter importances and cost breakdown (PNGs too)."""
    from tuneloop.sweep.report import write_report
    from tuneloop.sweep.runner import sweep_dir

    study, sweep = _load(name, storage)
    folder = write_report(study, output or sweep_dir(name), sweep)
    out.print(f"report: {folder / 'report.html'}")
