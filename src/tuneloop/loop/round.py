"""One feedback round, step by step, each step recorded before the next starts so that a round killed anywhere
continues from that step when run again:

    campaign  sample the served traffic since the previous round and create the feedback campaign
    votes     wait for raters (real ones in the rater app, or scripts/simulate_raters.py) until enough usable
              votes, or stop the round at the deadline
    export    turn the votes into TRL rows (flagged raters and ties out, as `tuneloop feedback export`)
    train     retrain from the champion on them, evaluate against the champion, gate, register the challenger
              with the round in its lineage, and promote it only if the gate passes (`pipeline.run`)

Only one round per registered model runs at a time (loop.store.locked). The steps are glue: the campaign, the
export, training, evaluation, the gate, registration and promotion are the same code the separate commands run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuneloop import workspace
from tuneloop.config.loop import Loop
from tuneloop.config.schema import Recipe
from tuneloop.config.sweep import duration_s
from tuneloop.errors import TuneloopError
from tuneloop.feedback import store as feedback
from tuneloop.loop import store
from tuneloop.recipes import load_recipe
from tuneloop.rundir import RunDir


def loop_name(recipe: Recipe) -> str:
    assert recipe.loop is not None
    return recipe.loop.name or recipe.name


def loop_model(recipe: Recipe) -> str:
    assert recipe.loop is not None
    return recipe.loop.model or (recipe.registry.name if recipe.registry else "")


def round_dir(loop: str, number: int) -> Path:
    return workspace.home() / "loop" / loop / f"round-{number}"


def run_round(
    recipe: Recipe,
    recipe_path: Path,
    *,
    overrides: list[str] | None = None,
    wait: bool = True,
    say: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Run the loop's open round (or a new one) as far as it can go; returns the round's record. `overrides` are
    the `--set` values `recipe` was loaded with (the retraining recipe is derived from the same file). With
    `wait=False` a round without enough votes yet returns at once, `waiting` (run it again later, e.g. from cron)."""
    loop = recipe.loop
    assert loop is not None, "the caller checks that the recipe has a `loop:` section"
    name, model = loop_name(recipe), loop_model(recipe)
    with store.locked(model):
        rnd = store.open_round(name, model)
        say(f"round {rnd['number']} of loop {name} (model {model}): at step {rnd['step']}")
        rnd = store.save(rnd, status="running")
        if "mlflow_run_id" not in rnd["state"] and recipe.tracking.mlflow:
            rnd = store.save(rnd, state={"mlflow_run_id": _parent_run(recipe, rnd, say)})
        steps = {"campaign": _campaign, "votes": _votes, "export": _export, "train": _train}
        while rnd["step"] != "done" and rnd["status"] == "running":
            rnd = steps[rnd["step"]](
                recipe, recipe_path, loop, rnd, say=say, wait=wait, sleep=sleep, overrides=overrides
            )
        if rnd["status"] in ("done", "stopped"):
            _finish_tracking(rnd, say)
        return rnd


def _parent_run(recipe: Recipe, rnd: dict[str, Any], say: Callable[[str], None]) -> str | None:
    """The round's MLflow run: its training run is a child, and its summary (votes, agreement, rows, metric
    deltas with CIs, decision, cost) lands here. Tracking never stops a round: None when MLflow is unreachable."""
    try:
        from tuneloop.tracking import store as S

        S.quiet()
        client = S.client()
        experiment = S.experiment_id(client, recipe.tracking.experiment or recipe.name)
        tags = {
            "tuneloop.kind": "loop_round",
            "tuneloop.loop": rnd["loop"],
            "tuneloop.loop_round": str(rnd["number"]),
            "tuneloop.model": rnd["model"],
        }
        run = S.retry(
            lambda: client.create_run(experiment, run_name=f"loop/{rnd['loop']}/round-{rnd['number']}", tags=tags)
        )
        return run.info.run_id
    except Exception as e:  # shown, never fatal
        say(f"warning: the round is not tracked in MLflow ({type(e).__name__}: {e})")
        return None


def summary_metrics(state: dict[str, Any]) -> dict[str, float]:
    """The round's numbers as MLflow metrics: votes, agreement, rows, each metric's difference from the champion
    with its CI, and the cost by kind."""
    out: dict[str, float] = {}
    for key in ("votes", "rows", "agreement"):
        if isinstance(state.get(key), int | float):
            out[key] = float(state[key])
    for d in state.get("deltas") or []:
        base = f"delta/{d['task']}/{d['metric']}"
        out[base] = d["diff"]
        if d.get("ci"):
            out[f"{base}_ci_low"], out[f"{base}_ci_high"] = d["ci"]
    for kind, cost in (state.get("cost") or {}).items():
        if isinstance(cost, dict) and isinstance(cost.get("money"), int | float):
            out[f"cost/{kind}/money"] = cost["money"]
    return out


def _delta(comparison: dict[str, Any]) -> dict[str, Any]:
    return {k: comparison.get(k) for k in ("task", "metric", "a", "b", "diff", "ci", "p_value")}


def _finish_tracking(rnd: dict[str, Any], say: Callable[[str], None]) -> None:
    run_id = rnd["state"].get("mlflow_run_id")
    if not run_id:
        return
    try:
        from mlflow.entities import Metric, RunTag

        from tuneloop.tracking import store as S

        client = S.client()
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in summary_metrics(rnd["state"]).items()]
        shown = [k for k in ("decision", "reason", "campaign", "version") if rnd["state"].get(k)]
        tags = [RunTag(f"tuneloop.{k}", str(rnd["state"][k])[:5000]) for k in shown]
        S.retry(lambda: client.log_batch(run_id, metrics=metrics, tags=tags))
        S.retry(lambda: client.set_terminated(run_id, "FINISHED"))
    except Exception as e:  # shown, never fatal
        say(f"warning: the round's summary is not in MLflow ({type(e).__name__}: {e})")


def campaign_name(loop: Loop, number: int) -> str:
    return f"{loop.campaign.name}-r{number}"


def _campaign(recipe: Recipe, recipe_path: Path, loop: Loop, rnd: dict[str, Any], **kw: Any) -> dict[str, Any]:
    from tuneloop.feedback import campaigns

    say = kw["say"]
    name = campaign_name(loop, rnd["number"])
    spec = loop.campaign.model_copy(deep=True, update={"name": name})
    since = store.previous_start(rnd["loop"], rnd["number"])
    if spec.requests is not None and since is not None:
        spec.requests.since = since.isoformat()  # traffic the previous round did not see
    try:
        created = feedback.campaign(name)["created_at"]
        say(f"campaign {name} exists (created before this round was interrupted): kept")
    except TuneloopError:
        campaigns.create(spec, recipe_path, say=say)
        created = datetime.now(UTC)
    created = created if created.tzinfo else created.replace(tzinfo=UTC)  # the votes' deadline counts from here
    traffic = {"since": spec.requests.since, "model": spec.requests.model} if spec.requests else None
    return store.save(
        rnd, step="votes", state={"campaign": name, "campaign_created_at": created.isoformat(), "traffic": traffic}
    )


def usable_votes(campaign: str) -> int:
    """Votes that export would use: not on gold items, not by raters flagged on gold items."""
    from tuneloop.feedback import campaigns

    flagged = {r for r, f in campaigns.flagged(campaign).items() if f["flagged"]}
    return sum(1 for v in feedback.all_votes(campaign) if not v["gold"] and v["rater"] not in flagged)


def _votes(recipe: Recipe, recipe_path: Path, loop: Loop, rnd: dict[str, Any], **kw: Any) -> dict[str, Any]:
    say, wait, sleep = kw["say"], kw["wait"], kw["sleep"]
    campaign = rnd["state"]["campaign"]
    deadline = datetime.fromisoformat(rnd["state"]["campaign_created_at"]) + timedelta(
        seconds=duration_s(loop.votes.wait)
    )
    shown = -1
    while True:
        n = usable_votes(campaign)
        if n >= loop.votes.min:
            say(f"{n} usable votes on {campaign} (at least {loop.votes.min}): exporting")
            return store.save(rnd, step="export", state={"votes": n, "agreement": _agreement(campaign)})
        if datetime.now(UTC) >= deadline:
            reason = (
                f"too few votes: {n} usable of the {loop.votes.min} needed by the deadline "
                f"({deadline:%Y-%m-%d %H:%M} UTC, `loop.votes.wait` {loop.votes.wait})"
            )
            say(f"round {rnd['number']} stopped: {reason}")
            return store.save(rnd, status="stopped", state={"votes": n, "decision": "stopped", "reason": reason})
        if not wait:
            say(
                f"{n} of {loop.votes.min} usable votes on {campaign}; waiting until {deadline:%Y-%m-%d %H:%M} UTC "
                "(run the loop again to continue)"
            )
            return store.save(rnd, status="waiting", state={"votes": n})
        if n != shown:
            say(f"{n} of {loop.votes.min} usable votes on {campaign}; waiting (deadline {deadline:%Y-%m-%d %H:%M} UTC)")
            shown = n
        sleep(duration_s(loop.votes.poll))


def _agreement(campaign: str) -> float | None:
    """Krippendorff's alpha of the pairwise votes (None with too few overlapping votes to say)."""
    from tuneloop.feedback.campaigns import report

    found = report(campaign, resamples=200).get("agreement", {}).get("pairwise") or {}
    value = found.get("value")
    return value if isinstance(value, int | float) and value == value else None


def _export(recipe: Recipe, recipe_path: Path, loop: Loop, rnd: dict[str, Any], **kw: Any) -> dict[str, Any]:
    import shutil

    import yaml

    from tuneloop.feedback.export import export

    root = round_dir(rnd["loop"], rnd["number"])
    out = root / "data"
    if not (out / "export.yaml").is_file():  # else: exported before an interruption, the same votes, kept
        tmp = root / "data.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        export(rnd["state"]["campaign"], loop.export, tmp / "export")
        _split(tmp, loop, seed=rnd["number"])
        (tmp / "export" / "export.yaml").rename(tmp / "export.yaml")
        tmp.rename(out)
    manifest = yaml.safe_load((out / "export.yaml").read_text())
    train_rows = sum(1 for _ in (out / "train" / "train.jsonl").open())
    held = out / "held-out" / "test.jsonl"
    held_rows = sum(1 for _ in held.open()) if held.is_file() else 0
    kw["say"](
        f"exported {manifest['rows']} {loop.export} rows from {manifest['votes_used']} votes: {train_rows} to "
        f"train, {held_rows} held out -> {out}"
    )
    return store.save(
        rnd,
        step="train",
        state={
            "data_dir": str(out / "train"),
            "rows": train_rows,
            "held_out_dir": str(held.parent) if held_rows else None,
            "held_out_rows": held_rows,
            "data_fingerprint": manifest["fingerprint"],
        },
    )


def _split(folder: Path, loop: Loop, seed: int) -> None:
    """train/train.jsonl and (for DPO pairs, when `held_out` > 0 leaves at least one pair) held-out/test.jsonl."""
    import random

    lines = (folder / "export" / "train.jsonl").read_text().splitlines()
    n_held = int(len(lines) * loop.held_out) if loop.export == "dpo" else 0
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_held]) if 0 < n_held < len(lines) else set()
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "train.jsonl").write_text("".join(f"{x}\n" for i, x in enumerate(lines) if i not in held))
    if held:
        (folder / "held-out").mkdir()
        (folder / "held-out" / "test.jsonl").write_text("".join(f"{x}\n" for i, x in enumerate(lines) if i in held))


def round_overrides(
    recipe_path: Path,
    loop: Loop,
    model: str,
    data_dir: Path,
    overrides: list[str] | None = None,
    held_out: Path | None = None,
) -> list[str]:
    """The recipe a round trains, as `--set` overrides of the recipe file: the loop's `retrain` stages from the
    champion on the exported rows, judged against the champion by the recipe's evaluation and gate, registered
    under the same name. Overrides rather than a new file, so that launched training processes resolve the same
    recipe (relative paths included) as the round."""

    champion = f"models:/{model}@champion"
    exported = {"source": str(data_dir), "eval_split": None}
    stages = [{"data": exported, **s.model_dump(mode="json", by_alias=True, exclude_unset=True)} for s in loop.retrain]
    sets = [  # the recipe's own `data` stays: its evaluation tasks read their rows from it
        f"base_model={json.dumps({'name': champion})}",
        f"stages={json.dumps(stages)}",
        f"evaluation.baseline={champion}",
        f"registry.name={model}",
        "loop=null",
        "monitor=null",
        "sweep=null",
    ]
    if held_out is not None:  # the held-out votes as one more evaluation task, scored on both models
        base = load_recipe(recipe_path, overrides)
        tasks = [
            t.model_dump(mode="json", by_alias=True, exclude_unset=True)
            for t in (base.evaluation.tasks if base.evaluation else [])
        ]
        held = {"source": str(held_out), "eval_split": None}
        tasks.append({"name": "feedback", "kind": "preference", "data": held, "split": "test"})
        sets.append(f"evaluation.tasks={json.dumps(tasks)}")
    return [*(overrides or []), *sets]


def _train(recipe: Recipe, recipe_path: Path, loop: Loop, rnd: dict[str, Any], **kw: Any) -> dict[str, Any]:
    from tuneloop import pipeline

    say = kw["say"]
    state = rnd["state"]
    model = rnd["model"]
    held = Path(state["held_out_dir"]) if state.get("held_out_dir") else None

    sets = round_overrides(recipe_path, loop, model, Path(state["data_dir"]), kw["overrides"], held)
    trained = load_recipe(recipe_path, sets)
    run = RunDir(round_dir(rnd["loop"], rnd["number"]) / "run")
    resume = run.summary_file.exists() or run.recipe_file.exists()
    tags = {
        "tuneloop.loop": rnd["loop"],
        "tuneloop.loop_round": str(rnd["number"]),
        "tuneloop.campaign": state["campaign"],
        "tuneloop.traffic": json.dumps(state.get("traffic")),
    }
    say(f"retraining {model}@champion on {state['rows']} rows: {', '.join(s.name for s in loop.retrain)}")
    if loop.launch and not run.summary_file.exists():
        _launch(loop.launch, recipe_path, sets, run.path, say)
        resume = True  # the launched processes trained; this one evaluates, gates, registers and promotes
    result = pipeline.run(
        trained,
        recipe_path,
        run_dir=run.path,
        resume=resume,
        say=say,
        tags=tags,
        parent_run_id=state.get("mlflow_run_id"),
    )
    reg, decision = result.registration, result.promotion
    promoted = bool(decision is not None and decision.promoted)
    evaluation = result.evaluation or {}
    gate = evaluation.get("gate")
    compute = result.cost.get("total") or {}
    cost: dict[str, Any] = {"compute": compute}
    if loop.votes.price is not None:  # rater time, priced per vote
        cost["raters"] = {"money": state.get("votes", 0) * loop.votes.price, "currency": compute.get("currency")}
    cost["total"] = {
        "money": sum(c.get("money") or 0 for c in cost.values()),
        "currency": compute.get("currency"),
        "device_hours": compute.get("device_hours"),
    }
    summary = {
        "run_dir": str(result.run_dir.path),
        "version": reg.version if reg is not None else None,
        "decision": "promoted" if promoted else "refused",
        "reason": decision.reason if decision is not None else "registry.promote is not auto: promote it by hand",
        "gate": None if not gate else "passed" if gate["passed"] else "failed",
        "deltas": [_delta(c) for c in evaluation.get("comparisons", [])],
        "cost": cost,
    }
    say(f"round {rnd['number']}: {model}/{summary['version']} {summary['decision']}")
    return store.save(rnd, step="done", status="done", state=summary)


def _launch(launcher: str, recipe_path: Path, sets: list[str], run_dir: Path, say: Callable[[str], None]) -> None:
    """Train the round's recipe under `loop.launch` (every rank runs `tuneloop.train`); its output streams through.
    A failure leaves the round at this step: run the loop again and the launch resumes from the last checkpoint."""
    import os
    import shlex
    import shutil
    import subprocess
    import sys

    words = shlex.split(launcher)
    found = shutil.which(words[0]) or (Path(sys.executable).with_name(words[0]))  # a venv's launcher, unactivated
    if not Path(found).exists():
        raise TuneloopError(f"loop.launch: {words[0]!r} is not on PATH nor next to {sys.executable}")
    cmd = [str(found), *words[1:], "-m", "tuneloop.train", str(recipe_path), "--run-dir", str(run_dir)]
    cmd += [arg for value in sets for arg in ("--set", value)]
    if run_dir.exists():
        cmd.append("--resume")
    say(f"launching the training: {shlex.join([*words, '-m', 'tuneloop.train', str(recipe_path), '...'])}")
    code = subprocess.call(cmd, env=os.environ.copy())
    if code != 0:
        raise TuneloopError(
            f"the launched training ({launcher}) exited with {code}; the round stays at its train "
            "step: run the loop again to resume it"
        )
