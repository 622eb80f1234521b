"""`--from STAGE`: find an earlier run whose first stages can be reused (the layout is tuneloop.rundir's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tuneloop.config.loader import resolved_yaml
from tuneloop.config.trainer_fields import closest
from tuneloop.errors import TuneloopError
from tuneloop.rundir import RunDir, StageSummary


def reusable_stages(recipe: Any, from_stage: str, smoke: bool) -> tuple[RunDir, dict[str, StageSummary]]:
    """The newest run of this recipe whose stages before STAGE finished with the same settings as now, and those
    stages' summaries. The old run is only read, never changed."""
    names = [s.name for s in recipe.stages]
    if from_stage not in names:
        hint = closest(from_stage, names)
        did = f"did you mean {hint}? " if hint else ""
        raise TuneloopError(f"--from {from_stage}: no such stage; {did}stages: {', '.join(names)}")
    k = names.index(from_stage)
    if k == 0:
        raise TuneloopError(
            f"--from {from_stage}: it is the first stage, so there is nothing to reuse; run without --from"
        )
    now = yaml.safe_load(resolved_yaml(recipe))
    same = ("base_model", "seed", "data")
    tried: list[str] = []
    for run in RunDir.of_recipe(recipe.name, smoke):
        if not run.recipe_file.is_file():
            continue
        then = yaml.safe_load(run.recipe_file.read_text()) or {}
        changed = [key for key in same if then.get(key) != now.get(key)]
        old_stages = {s.get("name"): s for s in then.get("stages", [])}
        changed += [f"stage {n}" for n in names[:k] if old_stages.get(n) != now["stages"][names.index(n)]]
        if changed:
            tried.append(f"{run.name}: {', '.join(changed)} changed since")
            continue
        found = {}
        for name in names[:k]:
            summary = run.stage_summary(name)
            if summary is None or not Path(summary.model_dir).exists():
                break
            found[name] = summary
        if len(found) == k:
            return run, found
        tried.append(f"{run.name}: stage {names[len(found)]} did not finish")
    detail = "; ".join(tried[:5]) or "no earlier runs"
    raise TuneloopError(
        f"--from {from_stage}: no run of {recipe.name} has {', '.join(names[:k])} finished with this recipe's "
        f"settings ({detail}); run the whole recipe once first"
    )
