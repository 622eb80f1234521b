"""The MLflow store: which one (the workspace's SQLite file unless `MLFLOW_TRACKING_URI` says otherwise), and a
client that is safe to create from several processes at once.

MLflow creates a new SQLite store's tables with alembic migrations on first contact; four processes doing that at
once corrupt the migration bookkeeping (measured: "Online migration expected to match one row"). The first
contact with a local store therefore happens under a file lock.

Those migrations cost a new workspace's first command ~1.3 s of CPU (2.45 s against 1.14 s for an existing store,
measured on 2 cores), and every new workspace paid it again. The first store created on a machine is therefore kept,
empty, in the user-level cache (one per MLflow version), and later new SQLite stores start as a copy of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tuneloop import workspace
from tuneloop.errors import TuneloopError

T = TypeVar("T")
_ready: set[str] = set()


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, or `sqlite:///<workspace>/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace.home() / 'mlflow.db'}"


def registry_uri() -> str:
    """The registry lives with the tracking store unless `MLFLOW_REGISTRY_URI` separates them."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri()


def exists() -> bool:
    """False only for a SQLite registry whose file is not there yet: read-only commands (`registry list`) then say
    there is nothing instead of creating a store."""
    uri = registry_uri()
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///") :]).exists()


def is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/"))


def artifact_root() -> str | None:
    """Artifacts of a SQLite store go next to its file (not into ./mlruns of whatever directory a run starts
    in); a server decides for itself (None)."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()


def quiet() -> None:
    """MLflow and alembic log every migration and download at INFO; tuneloop prints its own progress.
    (MLflow sets its loggers' level when imported, from MLFLOW_LOGGING_LEVEL.)"""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client() -> Any:
    """An MlflowClient for the tracking and registry stores, created (and migrated) once per process."""
    quiet()
    from mlflow import MlflowClient

    uri, reg = tracking_uri(), registry_uri()
    if uri not in _ready:
        with _store_lock(uri):
            db = _sqlite_file(uri)
            created = db is not None and not db.exists() and not _seed(db)
            c = MlflowClient(tracking_uri=uri, registry_uri=reg)
            _contact(lambda: c.search_experiments(max_results=1), uri)
            if created:
                _keep_template(db)
            if reg != uri:
                _contact(lambda: c.search_registered_models(max_results=1), reg)
        _ready.add(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=reg)


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def _template() -> Path:
    return workspace.cache_dir() / "mlflow" / f"empty-store-{importlib.metadata.version('mlflow')}.db"


def _seed(db: Path) -> bool:
    """Start a new SQLite store as a copy of the empty, migrated one in the cache; False when there is none yet.
    The copy's Default experiment keeps its artifacts next to this store, as the named experiments do."""
    template = _template()
    if not template.is_file():
        return False
    tmp = db.with_name(f"{db.name}.{os.getpid()}.seed")
    try:
        shutil.copyfile(template, tmp)
        with contextlib.closing(sqlite3.connect(tmp)) as con:
            artifacts = (db.parent / "mlartifacts" / "0").as_uri()
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (artifacts,))
            con.commit()
        os.replace(tmp, db)
    except (OSError, sqlite3.Error):  # an unreadable cache: MLflow creates the store itself
        tmp.unlink(missing_ok=True)
        return False
    return True


def _keep_template(db: Path) -> None:
    """Keep a store MLflow has just created, still empty, as the template of later ones (a consistent copy through
    SQLite's backup API, renamed into place so a concurrent reader never sees half a file)."""
    template = _template()
    if template.exists():
        return
    tmp = template.with_name(f"{template.name}.{os.getpid()}.tmp")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(db)) as src, contextlib.closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
        os.replace(tmp, template)
    except (OSError, sqlite3.Error):  # a read-only cache only costs later workspaces the migrations
        tmp.unlink(missing_ok=True)


def _contact(call: Callable[[], Any], uri: str) -> None:
    try:
        retry(call)
    except Exception as e:
        raise TuneloopError(f"cannot reach the MLflow store {uri}: {e}") from e


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def retry(call: Callable[[], T], attempts: int = 8) -> T:
    """Retry what SQLite refuses under concurrent writers ("database is locked"), with growing pauses."""
    for i in range(attempts):
        try:
            return call()
        except Exception as e:
            text = str(e).lower()
            if i + 1 == attempts or not ("database is locked" in text or "unable to open database" in text):
                raise
            time.sleep(0.1 * 2**i)
    raise AssertionError("unreachable")


def already_exists(error: Exception) -> bool:
    """MLflow's answer to creating a name that is taken (REST and SQL stores word it differently)."""
    return "RESOURCE_ALREADY_EXISTS" in str(getattr(error, "error_code", "")) or "already exists" in str(error)


def not_found(error: Exception) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(error, "error_code", "")) or "not found" in str(error).lower()


def experiment_id(c: Any, name: str) -> str:
    """The experiment's id, creating it (with the workspace's artifact root for a local store) if needed."""
    found = c.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise TuneloopError(
                f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) or set "
                "`tracking.experiment` to another name"
            )
        return found.experiment_id
    try:
        return retry(lambda: c.create_experiment(name, artifact_location=artifact_root()))
    except Exception:  # another process created it first
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def run_url(uri: str, experiment: str, run_id: str) -> str:
    """Where a person looks at the run: the server's page, or how to open the local store in the MLflow UI."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
    return f"run {run_id} in {uri} (browse: mlflow ui --backend-store-uri {uri})"
