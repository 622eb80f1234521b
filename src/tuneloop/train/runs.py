"""Run directories: one per run, holding the resolved recipe, each stage's checkpoints and model, and a summary.

<workspace>/runs/<recipe name>/<YYYYmmdd-HHMMSS>[-smoke]/
    recipe.yaml            the recipe as it ran (defaults merged, overrides applied)
    stages/<stage>/        TRL output_dir: checkpoint-N/, model/ (final weights or adapter), stage.json
    summary.json           written when training ends; `finished: false` while evaluation/registration follow
    tracking.json          the MLflow run id (and W&B run) this directory is recorded as
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tuneloop import workspace

SUMMARY = "summary.json"


def new_run_dir(recipe_name: str, smoke: bool) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = workspace.runs_dir() / recipe_name
    run = base / (stamp + ("-smoke" if smoke else ""))
    n = 1
    while run.exists():
        n += 1
        run = base / f"{stamp}{'-smoke' if smoke else ''}-{n}"
    return run


def latest_unfinished(recipe_name: str, smoke: bool) -> Path | None:
    """The newest run of this recipe that did not finish (crashed, killed or pre-empted)."""
    base = workspace.runs_dir() / recipe_name
    if not base.is_dir():
        return None
    runs = sorted((d for d in base.iterdir() if d.is_dir() and d.name.endswith("-smoke") == smoke), reverse=True)
    runs = [d for d in runs if not d.name.endswith("-smoke") or smoke]
    for run in runs:
        if not is_finished(run):
            return run
    return None


def is_finished(run: Path) -> bool:
    """Training, evaluation and registration all done (summaries of older runs carry no `finished` key)."""
    summary = run / SUMMARY
    if not summary.is_file():
        return False
    try:
        return json.loads(summary.read_text()).get("finished", True) is not False
    except ValueError:
        return False


def mark_finished(run: Path) -> None:
    path = run / SUMMARY
    summary = json.loads(path.read_text())
    summary["finished"] = True
    write_json(path, summary)


def last_checkpoint(stage_dir: Path) -> Path | None:
    """The newest complete checkpoint: trainer_state.json is written last, so a half-written one is skipped."""
    if not stage_dir.is_dir():
        return None
    done = [d for d in stage_dir.glob("checkpoint-*") if (d / "trainer_state.json").is_file()]
    return max(done, key=lambda d: int(d.name.split("-")[-1]), default=None)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically so a crash never leaves a half-written file that looks finished."""
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def reusable_stages(recipe: Any, from_stage: str, smoke: bool) -> tuple[Path, dict[str, dict[str, Any]]]:
    """For `--from STAGE`: the newest run of this recipe whose stages before STAGE finished with the same
    settings as now, and those stages' summaries. The old run is only read, never changed."""
    import yaml

    from tuneloop.config.loader import resolved_yaml
    from tuneloop.errors import TuneloopError

    names = [s.name for s in recipe.stages]
    if from_stage not in names:
        from tuneloop.config.trainer_fields import closest

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
    base = workspace.runs_dir() / recipe.name
    tried: list[str] = []
    runs = sorted((d for d in base.iterdir() if d.is_dir()), reverse=True) if base.is_dir() else []
    for run in runs:
        if run.name.endswith("-smoke") != smoke or not (run / "recipe.yaml").is_file():
            continue
        then = yaml.safe_load((run / "recipe.yaml").read_text()) or {}
        changed = [key for key in same if then.get(key) != now.get(key)]
        old_stages = {s.get("name"): s for s in then.get("stages", [])}
        changed += [f"stage {n}" for n in names[:k] if old_stages.get(n) != now["stages"][names.index(n)]]
        if changed:
            tried.append(f"{run.name}: {', '.join(changed)} changed since")
            continue
        found = {}
        for name in names[:k]:
            done = run / "stages" / name / "stage.json"
            summary = json.loads(done.read_text()) if done.is_file() else None
            if summary is None or not Path(summary["model_dir"]).exists():
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
