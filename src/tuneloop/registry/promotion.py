"""Promotion: `@champion` moves to a version only when it passes the recipe's gate against the current champion,
judged on the same suite with a paired bootstrap, exactly as a run is gated against its base model.

Evaluations are cached: a version's results on a task are reused whenever the rows (data fingerprint), the
metrics, the decoding settings and the backend are the same — the run that trained a version already evaluated
it on its recipe's suite, so promoting a fresh challenger of the same recipe usually generates nothing.

Order, so that an interruption anywhere leaves the registry as it was: evaluate (long, no registry writes) →
take the lock → re-read the champion (if it moved meanwhile, evaluate again against the new one) → move the
alias, recorded in the history → release.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop import workspace
from tuneloop.config.evaluation import GateRule, Generation
from tuneloop.config.lifecycle import Cost
from tuneloop.cost import recipe_price
from tuneloop.errors import TuneloopError
from tuneloop.eval.gate import apply_gate
from tuneloop.eval.runner import ModelRun, ModelSpec, compare, evaluate_model, load_run, write_results
from tuneloop.eval.suite import Suite, from_recipe, progress_bars
from tuneloop.eval.tasks import load_task
from tuneloop.models.registered import cache_dir, get_version
from tuneloop.recipes import load_recipe
from tuneloop.registry import aliases
from tuneloop.registry.register import candidate_entry
from tuneloop.rundir import RESULTS
from tuneloop.tracking import store


@dataclass
class Decision:
    """What a promotion attempt did and why, in words a reviewer can act on."""

    name: str
    version: str
    promoted: bool
    previous: str | None
    reason: str
    gate: dict[str, Any] | None = None
    report: Path | None = None
    forced: bool = False
    evaluated: list[str] = field(default_factory=list)  # versions that had to be evaluated (cache misses)


def _force(c: Any, name: str, version: str, reason: str | None) -> Decision:
    """`--force`: champion without the gate, recording why and who."""
    if not reason:
        raise TuneloopError("--force needs --reason: say why the gate is overridden (it is recorded)")
    with aliases.locked(c, name):
        before = aliases.current(c, name, aliases.CHAMPION)
        forced = "forced: gate not evaluated"
        aliases.move(c, name, aliases.CHAMPION, version, "promote", reason=reason, forced=True, detail=forced)
        _clear_challenger(c, name, version)
    return Decision(name, version, True, before, f"forced by {aliases.who()}: {reason}", forced=True)


def promote(
    name: str,
    version: str,
    *,
    suite: Suite | None = None,
    rules: list[GateRule] | None = None,
    own_gate: str | None = None,
    force: bool = False,
    reason: str | None = None,
    backend: str | None = None,
    say: Callable[[str], None] = print,
) -> Decision:
    """Move `@champion` to `version` if it passes the gate against the current champion (or, when there is no
    champion yet, if it passed its own run's gate). `force` skips the gate and records `reason` and who."""
    c = store.client()
    mv = get_version(f"models:/{name}/{version}")
    version = str(mv.version)
    if force:
        return _force(c, name, version, reason)
    evaluated: list[str] = []
    gate_state = own_gate or (mv.tags or {}).get("tuneloop.gate", "none")
    detail = (mv.tags or {}).get("tuneloop.gate.detail", "")
    for _attempt in range(3):
        champion = aliases.current(c, name, aliases.CHAMPION)
        if champion == version:
            return Decision(name, version, False, champion, f"version {version} is already the champion")
        verdict = report = None
        # a run's own gate (against its baseline) must have passed for the first champion, and always when the
        # promotion follows the run (`own_gate` given); `registry promote` judges against the champion alone
        if (champion is None or own_gate is not None) and gate_state != "passed":
            why = (
                "its run has no gate result (no evaluation gate in the recipe)"
                if gate_state == "none"
                else f"it failed its gate against its baseline: {detail}"
            )
            return Decision(name, version, False, champion, f"not promoted: {why}")
        if champion is None:
            why = f"first champion: passed its gate against its baseline ({detail})"
        else:
            if suite is None or rules is None:  # only a comparison needs them (downloads the recipe)
                suite, rules = recorded_suite(name, version, suite, rules)
            if not rules:
                return Decision(name, version, False, champion, "not promoted: the recipe has no gate to judge it by")
            verdict, report, evaluated = judge(name, version, champion, suite, rules, backend, say)
            if not verdict["passed"]:
                failed = "; ".join(f"{r['rule']}: {r['detail']}" for r in verdict["rules"] if not r["passed"])
                return Decision(
                    name,
                    version,
                    False,
                    champion,
                    f"not promoted: gate failed against champion version {champion}: {failed}",
                    verdict,
                    report,
                    evaluated=evaluated,
                )
            passed = "; ".join(f"{r['rule']}: {r['detail']}" for r in verdict["rules"])
            why = f"passed the gate against champion version {champion}: {passed}"
        with aliases.locked(c, name):
            if aliases.current(c, name, aliases.CHAMPION) != champion:
                say("the champion changed while this version was judged; judging it again against the new one")
                continue
            aliases.move(c, name, aliases.CHAMPION, version, "promote", detail=why[:4000])
            _clear_challenger(c, name, version)
        return Decision(name, version, True, champion, why, verdict, report, evaluated=evaluated)
    raise TuneloopError(f"{name}: the champion kept changing during promotion; try again")


def _clear_challenger(c: Any, name: str, version: str) -> None:
    """A champion is no longer a challenger."""
    if aliases.current(c, name, aliases.CHALLENGER) == version:
        aliases.move(c, name, aliases.CHALLENGER, None, "promote", detail=f"version {version} became champion")


def rollback(name: str, reason: str | None = None) -> Decision:
    """`@champion` back to the champion before the current one (replaying the history; deleted versions are
    skipped). No gate: that version passed its own when it was promoted."""
    c = store.client()
    with aliases.locked(c, name):
        now = aliases.current(c, name, aliases.CHAMPION)
        if now is None:
            raise TuneloopError(f"{name} has no champion to roll back")
        stack = aliases.champion_stack(c, name)
        while stack and stack[-1] == now:
            stack.pop()
        previous = None
        while stack:
            candidate = stack.pop()
            if candidate == now:
                continue
            try:
                c.get_model_version(name, candidate)
            except Exception:
                continue  # deleted since
            previous = candidate
            break
        if previous is None:
            raise TuneloopError(f"{name}: version {now} is the first champion in the history; nothing to roll back to")
        aliases.move(
            c, name, aliases.CHAMPION, previous, "rollback", reason=reason, detail=f"rolled back from version {now}"
        )
    return Decision(name, previous, True, now, f"rolled back from version {now} to version {previous}")


# ---------------------------------------------------------------- judging with cached evaluations


def judge(
    name: str,
    version: str,
    champion: str,
    suite: Suite,
    rules: list[GateRule],
    backend: str | None,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], Path, list[str]]:
    """Champion and candidate on the suite (cached where possible), paired comparison, gate; writes a report."""

    tasks = [load_task(t, suite.default_data, suite.base_dir, suite.smoke) for t in suite.tasks]
    backend = backend or suite.backend
    runs, evaluated = [], []
    for v, label in ((champion, f"v{champion} (champion)"), (version, f"v{version}")):
        run = cached_run(name, v, tasks, backend)
        if run is None:
            say(f"evaluating {name}/{v} on {len(tasks)} task(s) (no cached result for this suite)")
            run = _evaluate(name, v, tasks, suite, backend, say, progress_bars)
            evaluated.append(v)
        else:
            say(f"{name}/{v}: reusing its cached evaluation on this suite")
        run.entry["label"] = label
        runs.append(run)
    comparisons = compare(runs[0], runs[1], suite.resamples)
    verdict = apply_gate(rules, [r.entry for r in runs], comparisons, runs[1].entry["label"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = workspace.home() / "registry" / "promotions" / name / f"{stamp}-v{version}-vs-v{champion}"
    info = {"name": f"promotion of {name}/{version}", "path": suite.path, "tasks": _task_dumps(suite)}
    write_results(out, info, runs, comparisons, verdict)
    return verdict, out, evaluated


def _task_dumps(suite: Suite) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json") for t in suite.tasks]


def task_key(name: str, kind: str, metrics: list[str], generation: dict, labels: Any, fp: Any, backend: str) -> str:
    """What makes two evaluations of one task comparable: same rows, metrics, decoding, labels and engine."""
    body = {
        "name": name,
        "kind": kind,
        "metrics": sorted(m for m in metrics if not m.startswith("evaluate:")),
        "generation": generation,
        "labels": labels,
        "fingerprint": fp,
        "backend": backend,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _wanted_keys(tasks: list[Any], backend: str) -> dict[str, str]:
    keys = {}
    for t in tasks:
        generation = t.task.generation.model_dump(mode="json")
        keys[t.task.name] = task_key(
            t.task.name, t.kind, t.metrics, generation, t.labels, t.data["fingerprint"], backend
        )
    return keys


def _result_keys(results: dict[str, Any], entry: dict[str, Any]) -> dict[str, str]:
    configs = {t["name"]: t for t in (results.get("suite") or {}).get("tasks") or []}
    keys = {}
    for task, body in (entry.get("tasks") or {}).items():
        config = configs.get(task)
        if config is None:
            continue

        generation = Generation.model_validate(config.get("generation") or {}).model_dump(mode="json")
        labels = (body.get("classification") or {}).get("labels") or config.get("labels")
        keys[task] = task_key(
            task,
            body["kind"],
            list(body.get("metrics") or {}),
            generation,
            labels,
            (body.get("data") or {}).get("fingerprint"),
            entry.get("backend", ""),
        )
    return keys


def cached_run(name: str, version: str, tasks: list[Any], backend: str) -> ModelRun | None:
    """The version's evaluation on exactly these tasks, from its own registered results or an earlier judgment."""

    wanted = _wanted_keys(tasks, backend)
    for results_file in _cached_results(name, version):
        results = json.loads(results_file.read_text())
        entries = [candidate_entry(results)] if results_file.parent.name == "eval" else results.get("models", [])
        for entry in entries:
            if entry is None:
                continue
            have = _result_keys(results, entry)
            if all(have.get(t) == k for t, k in wanted.items()):
                run = load_run(results_file.parent, entry["label"])
                return _restrict(run, set(wanted))
    return None


def _cached_results(name: str, version: str) -> list[Path]:
    """Earlier judgments' evaluations first, then the results registered with the version."""
    local = cache_dir(name, version)
    found = sorted((local.parent / f"{local.name}.evals").glob("*/results.json"))
    registered = _registered_eval(name, version)
    return found + ([registered] if registered else [])


def _registered_eval(name: str, version: str) -> Path | None:
    """The version's registered eval/results.json (None when it was registered without evaluation)."""
    folder = _version_file(name, version, "eval")
    return folder / RESULTS if folder is not None and (folder / RESULTS).is_file() else None


def _version_file(name: str, version: str, relpath: str) -> Path | None:
    """One file or folder of a registered version: from its materialized copy, else fetched alone (not the
    weights) into `<version>.meta/`; None when the version has no such artifact."""
    local = cache_dir(name, version)
    for root in (local, local.parent / f"{local.name}.meta"):
        if (root / relpath).exists():
            return root / relpath
    mv = get_version(f"models:/{name}/{version}")
    meta = local.parent / f"{local.name}.meta"
    try:
        import mlflow.artifacts

        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{mv.source}/{relpath}", dst_path=str(meta), tracking_uri=store.tracking_uri()
        )
    except Exception:
        return None
    return meta / relpath if (meta / relpath).exists() else None


def _restrict(run: ModelRun, tasks: set[str]) -> ModelRun:
    entry = dict(run.entry)
    entry["tasks"] = {k: v for k, v in entry["tasks"].items() if k in tasks}
    stats = {k: v for k, v in run.stats.items() if k.split("/", 1)[0] in tasks}
    return ModelRun(entry, stats)


def _evaluate(name: str, version: str, tasks: list[Any], suite: Suite, backend: str, say, progress_bars) -> ModelRun:

    price = recipe_price(suite.cost or Cost(), suite.base_dir)
    with progress_bars() as progress:
        run = evaluate_model(
            ModelSpec(f"{name}/{version}", f"models:/{name}/{version}"),
            tasks,
            backend=backend,
            base_dir=suite.base_dir,
            resamples=suite.resamples,
            say=say,
            progress=progress,
            price=price,
        )
    return remember(name, version, run, suite, _wanted_keys(tasks, backend))


def remember_result(name: str, version: str, results: dict[str, Any], out_dir: Path, label: str, suite: Suite) -> None:
    """`remember` for one model of a results.json (the baseline of a run that was a registered version)."""
    entry = next(e for e in results["models"] if e["label"] == label)
    remember(name, version, load_run(out_dir, label), suite, _result_keys(results, entry))


def remember(name: str, version: str, run: ModelRun, suite: Suite, keys: dict[str, str]) -> ModelRun:
    """Keep a version's evaluation on these tasks where `cached_run` finds it: a later promotion judged on the same
    suite reuses it instead of generating every answer again (a loop round evaluates the champion as its baseline,
    then promotion judges the challenger against the same champion). `keys`: task -> comparability key."""
    local = cache_dir(name, version)
    key = hashlib.sha256(json.dumps(sorted(keys.values())).encode()).hexdigest()[:12]
    out = local.parent / f"{local.name}.evals" / key
    info = {"name": suite.name, "path": suite.path, "tasks": _task_dumps(suite)}
    write_results(out, info, [ModelRun(dict(run.entry), dict(run.stats))], [], None)
    return load_run(out, run.entry["label"])


def recorded_suite(
    name: str, version: str, suite: Suite | None, rules: list[GateRule] | None
) -> tuple[Suite, list[GateRule]]:
    """The suite and gate of the recipe the version was trained with (its registered recipe.yaml), unless the
    caller gives them. Relative data paths are read from the recipe's original directory."""

    mv = get_version(f"models:/{name}/{version}")
    recipe_file = _version_file(name, version, "recipe.yaml")
    if recipe_file is None:
        raise TuneloopError(f"{name}/{version} has no registered recipe.yaml; give --suite to judge it by")
    recorded = (mv.tags or {}).get("tuneloop.recipe_path")
    original = Path(recorded) if recorded else recipe_file
    base_dir = original.parent if original.parent.is_dir() else Path.cwd()
    recipe = load_recipe(recipe_file, base_dir=base_dir)
    if suite is None:
        if recipe.evaluation is None:
            raise TuneloopError(
                f"{name}/{version} was trained by a recipe without `evaluation:`; give --suite to judge it by"
            )
        suite = from_recipe(recipe, original, base_dir=base_dir)
    if rules is None:
        rules = recipe.promotion_gate() or list(suite.gate or [])
    return suite, rules
