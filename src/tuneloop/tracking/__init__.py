"""Run tracking: every run in MLflow (the system of record) and, when a recipe asks, in Weights & Biases.

A `RunTracker` is created for a recipe before training, begins once the run directory is known (a resumed run
reopens its MLflow run, whose id is kept in `<run>/tracking.json`), receives parameters, curves, datasets,
evaluation results, costs and artifacts, and finishes FINISHED, FAILED (with the error) or KILLED.

Logging during training never stops the training: if the store goes away mid-run, the tracker warns once and
the run's own directory still holds everything (register it later with `tuneloop registry register RUN_DIR`).
"""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop.config.lifecycle import Tracking
from tuneloop.rundir import TRACKING, RunDir, StageSummary
from tuneloop.tracking import store
from tuneloop.tracking.wandb_sink import WandbRun, resolve_mode

TRACKING_FILE = TRACKING  # the run directory's record of its MLflow (and W&B) run
MAX_PARAM = 6000  # MLflow's limit on a parameter value


class RunTracker:
    """One run's record. A disabled tracker (other ranks, `tracking.mlflow: false`) accepts every call."""

    def __init__(
        self, settings: Tracking | None, experiment: str, kind: str, say: Callable[[str], None] = print
    ) -> None:
        self.settings = settings or Tracking()
        self.experiment = experiment
        self.kind = kind  # run | train | eval | registration
        self.say = say
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.uri = store.tracking_uri()
        self.wandb: Any = None
        self._client: Any = None
        self._warned = False
        self._params: dict[str, str] = {}
        self.parent_run_id: str | None = None  # a sweep's run, when this run is one of its trials
        self.extra_tags: dict[str, str] = {}  # set by the caller before the run starts (a loop round's lineage)

    @classmethod
    def disabled(cls) -> RunTracker:
        return cls(Tracking(mlflow=False), "", "none", lambda _m: None)

    @property
    def enabled(self) -> bool:
        return self.settings.mlflow

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = store.client()
        return self._client

    def preflight(self) -> None:
        """Reach the store and settle W&B's mode before anything heavy starts, so a wrong URI or a missing
        W&B key fails in seconds, not after training."""
        if self.enabled:
            _ = self.client
        if self.settings.wandb is not None:
            resolve_mode(self.settings.wandb)

    # ------------------------------------------------------------------ lifecycle

    def begin(self, run_dir: Path, run_name: str, tags: dict[str, str], config: dict[str, Any] | None = None) -> None:
        """Create the MLflow run (or reopen the one this run directory already has) and the W&B run."""
        record_file = run_dir / TRACKING_FILE
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        if self.enabled:
            c = self.client
            previous = record.get("mlflow") or {}
            if previous.get("uri") == self.uri and self._exists(previous.get("run_id")):
                self.run_id = previous["run_id"]
                self.experiment_id = previous["experiment_id"]
                store.retry(lambda: c.update_run(self.run_id, status="RUNNING"))
                # a run begun elsewhere (a loop round's launched training) joins its parent and lineage here
                late = {**self.extra_tags, **({"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else {})}
                for key, value in late.items():
                    store.retry(lambda k=key, v=value: c.set_tag(self.run_id, k, v))
                self._params = dict(c.get_run(self.run_id).data.params)
                self.say(f"tracking: reopened MLflow run {self.run_id}")
            else:
                self.experiment_id = store.experiment_id(c, self.experiment)
                all_tags = {"tuneloop.kind": self.kind, "tuneloop.run_dir": str(run_dir), **tags, **self.extra_tags}
                if self.parent_run_id:
                    all_tags["mlflow.parentRunId"] = self.parent_run_id
                run = store.retry(lambda: c.create_run(self.experiment_id, run_name=run_name, tags=all_tags))
                self.run_id = run.info.run_id
            record["mlflow"] = {"uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}
            self.say(f"tracking: MLflow {store.run_url(self.uri, self.experiment_id, self.run_id)}")
        if self.settings.wandb is not None:
            self.wandb = WandbRun.start(
                self.settings.wandb, self.experiment, run_name, run_dir, config or {}, record.get("wandb"), self.say
            )
            record["wandb"] = self.wandb.record()
        if record:
            run_dir.mkdir(parents=True, exist_ok=True)
            record_file.write_text(json.dumps(record, indent=2) + "\n")

    def stage_run(self, run_dir: Path, stage: Any, summary: StageSummary) -> None:
        """A child MLflow run for one finished stage, under this run (`mlflow.parentRunId`): the stage's method,
        args and start as params, its summary as metrics, stage.json as an artifact. Created once per stage; its id
        is kept in tracking.json so a resumed run does not record a finished stage twice."""
        if not (self.enabled and self.run_id):
            return
        record_file = run_dir / TRACKING_FILE
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        children = record.setdefault("stage_runs", {})
        if stage.name in children:
            return
        c = self.client
        parent = c.get_run(self.run_id)
        tags = {
            "mlflow.parentRunId": self.run_id,
            "tuneloop.kind": "stage",
            "tuneloop.stage": stage.name,
            "tuneloop.method": stage.method,
            "tuneloop.run_dir": str(run_dir),
        }
        if summary.reused_from:
            tags["tuneloop.reused_from"] = summary.reused_from

        def create() -> None:
            name = f"{parent.info.run_name}/{stage.name}"
            child = store.retry(lambda: c.create_run(self.experiment_id, run_name=name, tags=tags))
            child_tracker = RunTracker(self.settings, self.experiment, "stage", self.say)
            child_tracker._client, child_tracker.run_id, child_tracker.experiment_id = (
                c,
                child.info.run_id,
                (self.experiment_id),
            )
            data = stage.model_dump(mode="json", exclude_none=True, exclude={"data", "name"})
            child_tracker.log_params(flatten(data))
            child_tracker.log_metrics(
                {k.split("/", 2)[-1]: v for k, v in stage_metrics(summary).items() if k.startswith("stage/")}
            )
            child_tracker.log_artifact(RunDir(run_dir).stage_file(stage.name))
            store.retry(lambda: c.set_terminated(child.info.run_id, "FINISHED"))
            children[stage.name] = child.info.run_id
            record_file.write_text(json.dumps(record, indent=2) + "\n")

        self._safe(create)

    def _attached(self, run_id: str) -> RunTracker:
        """A tracker for another run of the same store and experiment (MLflow only)."""
        other = RunTracker(self.settings.model_copy(update={"wandb": None}), self.experiment, "stage", self.say)
        other._client, other.run_id, other.experiment_id = self.client, run_id, self.experiment_id
        return other

    def _exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            self.client.get_run(run_id)
        except Exception:
            return False
        return True

    def finish(self, status: str = "FINISHED", error: BaseException | None = None) -> None:
        """End the run: FINISHED, FAILED with the error (message as a tag, traceback as error.txt) or KILLED."""
        if error is not None:
            message = f"{type(error).__name__}: {error}"
            self.set_tags({"tuneloop.error": message[:7900]})
            text = "".join(traceback.format_exception(error))
            self.log_text(text, "error.txt")
        if self.enabled and self.run_id:
            self._safe(lambda: store.retry(lambda: self.client.set_terminated(self.run_id, status)))
        if self.wandb is not None:
            self.wandb.finish(0 if status == "FINISHED" else 1, self.say)
            if self.wandb.offline:
                self.say(f"W&B: offline run in {self.wandb.dir}; upload it with `wandb sync {self.wandb.dir}`")

    # ------------------------------------------------------------------ logging

    def _safe(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as e:  # a tracking hiccup must not end a training run
            if not self._warned:
                self._warned = True
                self.say(f"[yellow]warning:[/] tracking failed ({type(e).__name__}: {e}); the run goes on")

    def log_params(self, params: dict[str, Any]) -> None:
        """Log parameters once; on a resumed run only new keys (MLflow parameters cannot change)."""
        if self.wandb is not None:
            self.wandb.config(params)
        if not (self.enabled and self.run_id):
            return
        from mlflow.entities import Param

        fresh = {k: str(v)[:MAX_PARAM] for k, v in params.items() if k not in self._params}
        changed = {k for k, v in params.items() if k in self._params and self._params[k] != str(v)[:MAX_PARAM]}
        if changed:
            self.set_tags({"tuneloop.resumed_with_changes": ", ".join(sorted(changed))[:7900]})
        items = [Param(k, v) for k, v in fresh.items()]
        for i in range(0, len(items), 100):
            batch = items[i : i + 100]
            self._safe(lambda batch=batch: store.retry(lambda: self.client.log_batch(self.run_id, params=batch)))
        self._params.update(fresh)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Numbers only: None, NaN and non-numbers are left out (MLflow stores NaN, but plots and gates choke)."""
        clean = {k: float(v) for k, v in metrics.items() if _number(v)}
        if not clean:
            return
        if self.wandb is not None:
            self.wandb.log(clean, step)
        if not (self.enabled and self.run_id):
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step or 0) for k, v in clean.items()]
        for i in range(0, len(items), 1000):
            batch = items[i : i + 1000]
            self._safe(lambda batch=batch: store.retry(lambda: self.client.log_batch(self.run_id, metrics=batch)))

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not (self.enabled and self.run_id) or not tags:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._safe(lambda: store.retry(lambda: self.client.log_batch(self.run_id, tags=items)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file or a whole directory."""
        if not (self.enabled and self.run_id) or not path.exists():
            return
        if path.is_dir():
            self._safe(lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path))
        else:
            self._safe(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled and self.run_id:
            self._safe(lambda: self.client.log_text(self.run_id, text, artifact_file))

    def log_dataset(self, ds: Any, name: str, digest: str, source: str, context: str) -> None:
        """A dataset input (`mlflow.log_input`) with tuneloop's content fingerprint as its digest."""
        if not (self.enabled and self.run_id):
            return

        def log() -> None:
            import mlflow.data
            from mlflow.entities import DatasetInput, InputTag

            dataset = mlflow.data.from_huggingface(ds, name=name, digest=digest, source=_dataset_source(source))
            entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
            store.retry(lambda: self.client.log_inputs(self.run_id, datasets=[entity]))

        self._safe(log)

    def log_dataset_ref(self, name: str, digest: str, source: str, context: str, rows: int | None = None) -> None:
        """A dataset input known by fingerprint only (evaluation rows, which the tracker never holds)."""
        if not (self.enabled and self.run_id):
            return

        def log() -> None:
            from mlflow.data.meta_dataset import MetaDataset
            from mlflow.entities import DatasetInput, InputTag

            dataset = MetaDataset(_dataset_source(source), name=name, digest=digest)
            tags = [InputTag("mlflow.data.context", context)]
            if rows is not None:
                tags.append(InputTag("tuneloop.rows", str(rows)))
            entity = DatasetInput(dataset._to_mlflow_entity(), tags=tags)
            store.retry(lambda: self.client.log_inputs(self.run_id, datasets=[entity]))

        self._safe(log)

    def callback(self, stage: str) -> Any:
        """A TrainerCallback that logs the stage's curves (loss, learning rate, eval loss, gen_*) as they happen."""
        if not (self.enabled or self.wandb is not None):
            return None
        from tuneloop.tracking.curves import curves_callback

        return curves_callback(self, stage)

    def where(self) -> str | None:
        if self.enabled and self.run_id:
            return store.run_url(self.uri, self.experiment_id or "", self.run_id)
        return None


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _dataset_source(source: str) -> Any:
    """A local file or directory as MLflow's local source, anything else (a hub id) as a Hugging Face one."""
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    path = Path(source)
    if path.exists():
        # MLflow builds its local-file source class at import time; it is found in its registry by name
        local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
        return local(path.resolve().as_uri())
    return HuggingFaceDatasetSource(path=source)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested recipe as dotted parameters; named list items (stages, tasks) by name, others by index."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(data, list) and data and all(isinstance(i, dict) and "name" in i for i in data):
        for item in data:
            out.update(flatten({k: v for k, v in item.items() if k != "name"}, f"{prefix}{item['name']}."))
    elif isinstance(data, list) and any(isinstance(i, dict | list) for i in data):
        for i, item in enumerate(data):
            out.update(flatten(item, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = json.dumps(data) if isinstance(data, list) else data
    return out


def evaluation_metrics(results: dict[str, Any]) -> dict[str, float]:
    """results.json as metrics: each model's values with CI bounds, each comparison's difference and p-value,
    the gate (1 passed, 0 failed), and each model's evaluation cost."""
    out: dict[str, float] = {}
    for model in results.get("models", []):
        label = _key(model["label"])
        for task, body in (model.get("tasks") or {}).items():
            for metric, mv in (body.get("metrics") or {}).items():
                base = f"eval/{label}/{task}/{_key(metric)}"
                out[base] = mv.get("value")
                ci = mv.get("ci") or [None, None]
                out[f"{base}_ci_low"], out[f"{base}_ci_high"] = ci[0], ci[1]
            serving = body.get("serving") or {}
            if serving.get("tokens_per_s") is not None:
                out[f"eval/{label}/{task}/generated_tokens_per_s"] = serving["tokens_per_s"]
            if serving.get("cost_per_1k_tokens") is not None:
                out[f"eval/{label}/{task}/cost_per_1k_tokens"] = serving["cost_per_1k_tokens"]
        for k, v in (model.get("cost") or {}).items():
            if k in ("money", "device_hours", "flops", "mfu", "wall_s"):
                out[f"cost/evaluation/{label}/{k}"] = v
    for c in results.get("comparisons", []):
        base = f"compare/{_key(c['b'])}-vs-{_key(c['a'])}/{c['task']}/{_key(c['metric'])}"
        out[f"{base}/diff"] = c["diff"]
        out[f"{base}/p_value"] = c["p_value"]
    gate = results.get("gate")
    if gate:
        out["gate/passed"] = 1.0 if gate["passed"] else 0.0
    return out


def cost_metrics(cost: dict[str, Any], prefix: str = "cost") -> dict[str, float]:
    """A run's `cost` block ({training, evaluation, total}) as `cost/<part>/<figure>` metrics."""
    out = {}
    for part, record in (cost or {}).items():
        for k in ("money", "device_hours", "flops", "tokens", "mfu", "wall_s"):
            if isinstance(record, dict) and record.get(k) is not None:
                out[f"{prefix}/{part}/{k}"] = record[k]
    return out


def stage_metrics(summary: StageSummary) -> dict[str, float]:
    s = summary.stage
    out = {
        f"stage/{s}/{k}": getattr(summary, k)
        for k in (
            "steps",
            "loss_first",
            "loss_last",
            "eval_loss_before",
            "eval_loss_after",
            "train_tokens",
            "train_runtime_s",
            "tokens_per_s",
            "tokens_per_s_after_first_step",
            "wall_s",
            "world_size",
        )
    }
    out.update(cost_metrics({s: summary.cost or {}}, "cost/stage"))
    return out


def _key(text: str) -> str:
    """MLflow metric names allow letters, digits, `_ - . / ` and spaces."""
    return "".join(c if c.isalnum() or c in "_-./ " else "-" for c in text)


def log_environment(tracker: RunTracker, recipe_dir: Path) -> None:
    """Code version, key package versions and hardware as tags; the full package list as an artifact."""
    from tuneloop.tracking import context

    tags = context.code_tags(recipe_dir)
    tags.update({f"tuneloop.package.{k}": v for k, v in context.package_versions().items()})
    tags.update({f"tuneloop.hardware.{k}": v for k, v in context.hardware().items()})
    tracker.set_tags(tags)
    if tracker.enabled and tracker.run_id:
        tracker.log_text(context.requirements(), "environment/requirements.txt")
