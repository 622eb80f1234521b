"""Register a finished run's model in the MLflow Model Registry, with its lineage, results and model card.

What a version holds (the artifact folder `registered-model/` of the run's MLflow run):

    adapter or full weights, tokenizer, chat template, tuneloop-train.json (the prompt format it learned)
    tuneloop-model.json   kind, the adapter's portable base, parent version, weights SHA-256, recipe, run
    README.md             the model card (also the version's description)
    recipe.yaml           the recipe as it ran
    eval/                 results.json, per-example statistics, report.html/md (reused by promotion)
    merged/               the adapter merged into its base, when `registry.merged` asks for it

Registering is idempotent: a run (its MLflow run id) is registered at most once per registered model, so
`--resume` after a crash, or registering the same run directory twice, returns the existing version.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.config.schema import Recipe
from tuneloop.errors import TuneloopError
from tuneloop.models.builtin import BUILTIN_MODELS
from tuneloop.models.loading import merge_adapter
from tuneloop.models.references import weights_sha256
from tuneloop.models.registered import MODEL_RECORD
from tuneloop.recipes import load_recipe
from tuneloop.registry import aliases
from tuneloop.registry.card import model_card
from tuneloop.rundir import RunDir, RunSummary
from tuneloop.tracking import RunTracker, evaluation_metrics, store
from tuneloop.train import begin_tracking

ARTIFACT_PATH = "registered-model"
SKIP_FILES = {"README.md", "training_args.bin"}  # peft's placeholder card; a pickle nobody should load


@dataclass
class Registration:
    name: str
    version: str
    created: bool  # False: this run was registered before, and that version is returned

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def registered_name(recipe: Recipe, smoke: bool) -> str:
    """Smoke runs (tiny random models) register under `<name>-smoke`, never next to real versions."""
    assert recipe.registry is not None
    return recipe.registry.name + ("-smoke" if smoke else "")


def register_run(
    run_dir: Path, recipe: Recipe, tracker: RunTracker, *, smoke: bool, say: Callable[[str], None] = print
) -> Registration:
    """Register the run's final model as a new version with `@challenger`, or return its existing version."""
    if tracker.run_id is None:
        raise TuneloopError("registration needs the run's MLflow run (tracking.mlflow is off)")
    run = RunDir(run_dir)
    summary = run.summary()
    if summary is None:
        raise TuneloopError(f"{run_dir} has no summary.json: its training did not finish; nothing to register")
    results = run.results()
    c = store.client()
    name = registered_name(recipe, smoke)
    _ensure_model(c, name, recipe)
    existing = store.retry(lambda: c.search_model_versions(f"name='{name}' and run_id='{tracker.run_id}'"))
    if existing:
        return Registration(name, str(existing[0].version), False)
    run_tags = dict(c.get_run(tracker.run_id).data.tags)
    with tempfile.TemporaryDirectory(prefix="tuneloop-register-") as tmp:
        staged = Path(tmp) / ARTIFACT_PATH
        record = _stage(run, recipe, summary, results, staged, name, say)
        tags = lineage_tags(summary, results, record, run_tags, tracker.run_id, run_dir, smoke)

        card = model_card(recipe, summary, results, record, tags)
        (staged / "README.md").write_text(card)
        say(f"registering {name}: uploading {_size(staged)} to the MLflow run's artifacts")
        store.retry(lambda: c.log_artifacts(tracker.run_id, str(staged), ARTIFACT_PATH))
    source = f"{c.get_run(tracker.run_id).info.artifact_uri}/{ARTIFACT_PATH}"
    mv = store.retry(lambda: c.create_model_version(name, source, run_id=tracker.run_id, tags=tags, description=card))
    version = str(mv.version)
    aliases.move(c, name, aliases.CHALLENGER, version, "register", detail=f"registered from {run_dir}")
    tracker.set_tags({"tuneloop.registered": f"{name}/{version}"})
    return Registration(name, version, True)


def register_existing_run(run_dir: Path, say: Callable[[str], None] = print) -> Registration:
    """`tuneloop registry register RUN_DIR`: a run trained by `tuneloop train` (or on a cluster) and evaluated
    afterwards, registered as `tuneloop run` would have; its MLflow run is reopened (or created) for it."""

    run = RunDir(run_dir.resolve())
    run_dir = run.path
    summary = run.summary()
    if summary is None:
        raise TuneloopError(f"{run_dir} is not a finished run (no summary.json): finish or --resume it first")
    original = Path(summary.recipe_path or run.recipe_file)
    recipe = load_recipe(run.recipe_file, base_dir=original.parent if original.parent.is_dir() else None)
    if recipe.registry is None:
        raise TuneloopError(f"{run_dir}: its recipe has no `registry:` section (registry.name is the model's name)")
    tracker = RunTracker(recipe.tracking, recipe.tracking.experiment or recipe.name, "registration", say)
    tracker.preflight()
    smoke = summary.smoke
    begin_tracking(tracker, recipe, original, run_dir, smoke)
    results = run.results()
    if results is not None:
        tracker.log_metrics(evaluation_metrics(results))
    try:
        reg = register_run(run_dir, recipe, tracker, smoke=smoke, say=say)
    except BaseException as e:
        tracker.finish("FAILED", e)
        raise
    tracker.finish("FINISHED")
    return reg


def _ensure_model(c: Any, name: str, recipe: Recipe) -> None:
    """Create the registered model unless it exists (maybe created by another run at this very moment)."""
    try:
        store.retry(
            lambda: c.create_registered_model(
                name, tags={"tuneloop.recipe": recipe.name}, description=recipe.description or None
            )
        )
    except Exception as e:
        if not store.already_exists(e):
            raise


def _stage(
    run: RunDir,
    recipe: Recipe,
    summary: RunSummary,
    results: dict[str, Any] | None,
    out: Path,
    name: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Lay out the version's files in `out`; returns the model record (also written as tuneloop-model.json)."""

    model_dir = Path(summary.model_dir)
    base = summary.base_model
    out.mkdir(parents=True)
    kind, adapter_base = "full", None
    if (model_dir / "adapter_config.json").is_file():
        trained_on = json.loads((model_dir / "adapter_config.json").read_text()).get("base_model_name_or_path", "")
        if _inside(Path(trained_on), run.path):
            # the adapter's base exists only in this run (a smoke model, or the merge between two stages):
            # register the merged weights, which stand alone anywhere
            say("the adapter's base lives only in this run directory: registering the merged full weights")
            merge_adapter(model_dir, out)
        else:
            kind = "adapter"
            adapter_base = _portable_base(base, trained_on)
            _copy_files(model_dir, out)
            if recipe.registry is not None and recipe.registry.merged:
                merge_adapter(model_dir, out / "merged")
    else:
        _copy_files(model_dir, out)
    if results is not None:
        (out / "eval").mkdir()
        for f in run.eval_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, out / "eval" / f.name)
    shutil.copy2(run.recipe_file, out / "recipe.yaml")
    record = {
        "name": name,
        "kind": kind,
        "adapter_base": adapter_base,
        "parent": base.get("registry"),
        "base_model": base,
        "weights_sha256": weights_sha256(str(out)),
        "recipe": recipe.name,
        "run_dir": str(run.path),
    }
    (out / MODEL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _portable_base(base: dict[str, Any], trained_on: str) -> str:
    """How another machine finds the adapter's base: the registered version it came from (by number, never by
    alias), the built-in name, the hub id, or (for a local checkpoint) its absolute path."""

    ref = str(base.get("ref") or trained_on)
    if base.get("registry"):
        return f"models:/{base['registry']}"
    if ref in BUILTIN_MODELS:
        return ref
    path = Path(base.get("path") or trained_on)
    return str(path.resolve()) if path.is_dir() else ref


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _copy_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in SKIP_FILES:
            shutil.copy2(f, dst / f.name)


def _size(path: Path) -> str:
    n = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return f"{n / 2**20:.1f} MiB"


def candidate_entry(results: dict[str, Any]) -> dict[str, Any] | None:
    """The trained model's entry in a run's results.json (labelled `fine-tuned`; the last one otherwise)."""
    models = results.get("models") or []
    return next((m for m in models if m["label"] == "fine-tuned"), models[-1] if models else None)


def lineage_tags(
    summary: RunSummary,
    results: dict[str, Any] | None,
    record: dict[str, Any],
    run_tags: dict[str, str],
    run_id: str,
    run_dir: Path,
    smoke: bool,
) -> dict[str, str]:
    """Everything `registry lineage`, `show` and promotion read, as version tags (strings)."""
    base = summary.base_model
    tags = {
        "tuneloop.run_id": run_id,
        "tuneloop.run_dir": str(run_dir),
        "tuneloop.kind": record["kind"],
        "tuneloop.weights_sha256": record["weights_sha256"] or "",
        "tuneloop.base_model": str(base.get("ref", "")),
        "tuneloop.smoke": str(smoke).lower(),
    }
    for key in ("sha256", "revision", "commit"):
        if base.get(key):
            tags[f"tuneloop.base_model_{key}"] = str(base[key])
    if record.get("parent"):
        tags["tuneloop.parent"] = record["parent"]
    for key in (
        "tuneloop.recipe",
        "tuneloop.recipe_path",
        "tuneloop.recipe_sha256",
        "tuneloop.code.commit",
        "tuneloop.code.dirty",
        "tuneloop.package.commit",
        "tuneloop.version",
        "tuneloop.sweep",
        "tuneloop.sweep_trial",
        "tuneloop.loop",
        "tuneloop.loop_round",
        "tuneloop.campaign",
        "tuneloop.traffic",
    ):
        if key in run_tags:
            tags[key] = run_tags[key]
    for s in summary.stages:
        for split, fp in (s.data_fingerprints or {}).items():
            tags[f"tuneloop.data.{s.stage}.{split}"] = fp
        if s.data_prepare:
            tags[f"tuneloop.data.{s.stage}.prepare"] = s.data_prepare["fingerprint"]
    cost = summary.cost.get("total") or summary.cost.get("training") or {}
    if cost:
        keep = ("money", "currency", "device_hours", "flops", "tokens")
        tags["tuneloop.cost"] = json.dumps({k: cost.get(k) for k in keep})
    gate = (results or {}).get("gate")
    tags["tuneloop.gate"] = "none" if not gate else "passed" if gate["passed"] else "failed"
    if gate:
        tags["tuneloop.gate.detail"] = "; ".join(f"{r['rule']}: {r['detail']}" for r in gate["rules"])[:20000]
        tags["tuneloop.gate.metrics"] = json.dumps([r.get("metric") or r["rule"].split()[0] for r in gate["rules"]])
    entry = candidate_entry(results) if results else None
    if entry:
        metrics = {}
        for task, body in (entry.get("tasks") or {}).items():
            tags[f"tuneloop.data.eval.{task}"] = str((body.get("data") or {}).get("fingerprint"))
            for metric, mv in (body.get("metrics") or {}).items():
                metrics[f"{task}/{metric}"] = [mv.get("value"), *(mv.get("ci") or [None, None])]
        tags["tuneloop.metrics"] = json.dumps(metrics)
        tags["tuneloop.eval.suite"] = str((results.get("suite") or {}).get("name"))
    return tags
