"""Start or join a sweep: the study in its storage (SQLite in the workspace, PostgreSQL for several machines), the
sweep's MLflow run (trials are its children), local worker processes, and the report at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop import workspace
from tuneloop.sweep.budget import started, total_spent
from tuneloop.sweep.engine import HEARTBEAT_S, SweepLoop, open_storage, open_study
from tuneloop.sweep.report import summary_metrics, write_report
from tuneloop.sweep.spec import SweepSpec
from tuneloop.tracking import flatten, store


def default_storage() -> str:
    """One machine: an SQLite file in the workspace (several machines: a PostgreSQL URL, `--storage`)."""
    home = workspace.home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'sweeps.db'}"


def sweep_dir(name: str) -> Path:
    return workspace.home() / "sweeps" / name


def share_cores(workers: int, say: Callable[[str], None] = print) -> int | None:
    """Local workers split this machine's cores, as torchrun does for its processes. Several processes that each
    run torch on every core spin more threads than there are cores: on 2 cores, two of them took 82 s each for a
    generation that takes 14 s alone, against 26 s each at one thread apiece. A user's OMP_NUM_THREADS wins.
    Returns the threads each worker gets (None: left alone)."""
    if workers <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // workers)
    os.environ["OMP_NUM_THREADS"] = str(share)  # the worker processes, and whatever their trials start, inherit it
    import torch

    torch.set_num_threads(share)
    say(f"{workers} workers on {cores} cores: {share} torch thread(s) each (set OMP_NUM_THREADS to choose)")
    return share


def parent_run(spec: SweepSpec, study: Any) -> str | None:
    """The sweep's MLflow run, created once per study (its id is kept in the study) in the recipe's experiment."""
    if not spec.recipe.tracking.mlflow:
        return None
    if study.user_attrs.get("mlflow_run_id"):
        return study.user_attrs["mlflow_run_id"]

    client = store.client()
    experiment = store.experiment_id(client, spec.recipe.tracking.experiment or spec.recipe.name)
    tags = {"tuneloop.kind": "sweep", "tuneloop.sweep": spec.name, "tuneloop.recipe_path": str(spec.recipe_path)}
    run = store.retry(lambda: client.create_run(experiment, run_name=f"sweep/{spec.name}", tags=tags))
    params = flatten(spec.sweep.model_dump(mode="json", by_alias=True, exclude_none=True))
    params.update({f"space.{k}": v.model_dump_json(by_alias=True, exclude_none=True) for k, v in spec.space.items()})
    from mlflow.entities import Param

    items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes 100 parameters a call
        store.retry(lambda batch=items[i : i + 100]: client.log_batch(run.info.run_id, params=batch))
    study.set_user_attr("mlflow_run_id", run.info.run_id)
    study.set_user_attr("mlflow_experiment_id", experiment)
    return run.info.run_id


def run_sweep(
    spec: SweepSpec,
    *,
    storage_url: str | None = None,
    workers: int = 1,
    overrides: list[str] | None = None,
    smoke: bool = False,
    heartbeat_s: int = HEARTBEAT_S,
    join: bool = False,
    say: Callable[[str], None] = print,
) -> Any:
    """Run (or resume) the sweep until its budget or search space is spent; returns the study.

    `workers` > 1 starts that many worker processes on this machine (sharing the storage); `join` is a worker that
    joins a sweep another process started (`tuneloop sweep worker`)."""
    from tuneloop.sweep.live import LiveExecutor

    url = storage_url or default_storage()
    storage = open_storage(url, heartbeat_s)
    study = open_study(spec.sweep, spec.space, spec.name, storage, max_steps=_max_steps(spec))

    trials = study.get_trials(deepcopy=False)
    if trials and not join:
        spent = total_spent(trials)
        say(
            f"resuming sweep {spec.name}: {started(trials)} trial(s) ran already ({spent['money']:.4g} money, "
            f"{spent['device_hours']:.4g} device-h spent) in {_shown(url)}"
        )
    if not join or "source" not in study.user_attrs:  # what `sweep best --register` reloads the recipe from
        study.set_user_attr("source", str(spec.source.resolve()))
        study.set_user_attr("overrides", list(overrides or []))
    try:
        parent = parent_run(spec, study)
    except Exception as e:  # tracking never stops the work: the study holds every trial's record
        say(f"[yellow]warning:[/] the sweep's MLflow run could not be created ({type(e).__name__}: {e})")
        parent = None
    out = sweep_dir(spec.name)
    out.mkdir(parents=True, exist_ok=True)
    processes = []
    if workers > 1:
        share_cores(workers, say)
        for _ in range(workers - 1):
            cmd = [
                sys.executable,
                "-m",
                "tuneloop",
                "sweep",
                "worker",
                str(spec.source),
                "--storage",
                url,
                "--heartbeat",
                str(heartbeat_s),
            ]
            for o in overrides or []:
                cmd += ["--set", o]
            if smoke:
                cmd.append("--smoke")
            processes.append(subprocess.Popen(cmd))
        say(f"started {len(processes)} more worker process(es) on this machine")
    executor = LiveExecutor(spec, out, overrides or [], parent, smoke=smoke, say=say)
    loop = SweepLoop(spec.sweep, spec.space, study, executor, executor.planned_examples, say)
    try:
        loop.run()
    finally:
        for p in processes:
            p.wait()
    if not join and parent:
        try:
            _finish_parent(study, parent, out, spec)
        except Exception as e:  # the report is written again by the caller; the trials are all in the study
            say(f"[yellow]warning:[/] logging the sweep's results to MLflow failed ({type(e).__name__}: {e})")
    return study


def _finish_parent(study: Any, run_id: str, out: Path, spec: SweepSpec) -> None:
    """The report and the chosen trial's values on the sweep's run; FINISHED."""

    client = store.client()
    report_dir = write_report(study, out, spec.sweep)
    from mlflow.entities import Metric

    now = __import__("time").time()
    metrics = [Metric(k, float(v), int(now * 1000), 0) for k, v in summary_metrics(study, spec.sweep).items()]
    store.retry(lambda: client.log_batch(run_id, metrics=metrics))
    client.log_artifacts(run_id, str(report_dir), "report")
    store.retry(lambda: client.set_terminated(run_id, "FINISHED"))


def _max_steps(spec: SweepSpec) -> int | None:
    steps = spec.recipe.stages[-1].args.get("max_steps")
    return int(steps) if steps and int(steps) > 0 else None


def _shown(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: show it as given
        return url
