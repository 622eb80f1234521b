"""Register a sweep's chosen trial as a challenger of the recipe's registered model, with the sweep (name, trial,
storage) in its lineage. Trials themselves never register: a sweep of forty trials would otherwise leave forty
versions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop.config.loader import resolved_yaml
from tuneloop.errors import TuneloopError
from tuneloop.recipes import load_recipe
from tuneloop.registry.register import register_run
from tuneloop.rundir import RunDir
from tuneloop.sweep.space import override
from tuneloop.sweep.spec import load_sweep
from tuneloop.tracking import RunTracker


def register_trial(study: Any, row: dict[str, Any], say: Callable[[str], None] = print) -> Any:

    run = RunDir.holding(Path(row.get("run_dir") or ""))
    if run is None:
        raise TuneloopError(
            f"trial #{row['number']} has no finished run directory here ({row.get('run_dir')}); register it on the "
            "machine "
            "that ran it (`tuneloop registry register RUN_DIR`)"
        )
    source = study.user_attrs.get("source")
    if not source or not Path(source).is_file():
        raise TuneloopError(f"the sweep's file {source!r} is gone; it names the recipe whose registry to use")
    overrides = list(study.user_attrs.get("overrides") or [])
    spec = load_sweep(source, overrides)
    recipe = spec.recipe
    if recipe.registry is None:
        raise TuneloopError(f"{spec.recipe_path} has no `registry:` section (registry.name is the model's name)")
    record = json.loads(run.tracking_file.read_text()).get("mlflow") if run.tracking_file.is_file() else None
    if not record:
        raise TuneloopError(f"{run.path} was not tracked in MLflow, which registration needs")
    tracker = RunTracker(recipe.tracking, recipe.tracking.experiment or recipe.name, "registration", say)
    tracker.run_id, tracker.experiment_id = record["run_id"], record["experiment_id"]
    tracker.set_tags({"tuneloop.sweep": study.study_name, "tuneloop.sweep_trial": str(row["number"])})
    # The version keeps the recipe with the trial's values *and* the recipe's registry, baseline and gate (which the
    # trial ran without), so that `registry promote` judges it by the recipe's gate; the trial's own stays beside it.

    full = load_recipe(spec.recipe_path, [*overrides, *(override(k, v) for k, v in row["params"].items())])
    recorded, trial_copy = run.recipe_file, run.path / "recipe.trial.yaml"
    if not trial_copy.exists():
        recorded.replace(trial_copy)
    recorded.write_text(resolved_yaml(full))
    summary = run.summary()
    assert summary is not None
    return register_run(run.path, full, tracker, smoke=summary.smoke, say=say)
