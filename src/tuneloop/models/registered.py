"""`models:/NAME@ALIAS` and `models:/NAME/VERSION` turned into a local directory that `from_pretrained` loads.

A version is downloaded once into `<workspace>/registry/<store>/<name>/<version>/` (staged, then renamed, so a
killed download never looks complete), its weights are checked against the SHA-256 recorded at registration
(MLflow lets artifacts be overwritten; tuneloop notices), and an adapter's base model is re-pointed at this
machine's copy of the base (the registered adapter names it portably: a built-in name, a hub id, or the
registered parent version).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop import workspace
from tuneloop.errors import TuneloopError
from tuneloop.models.uri import ModelUri, parse_model_uri
from tuneloop.tracking import store

MODEL_RECORD = "tuneloop-model.json"  # written at registration: kind, base, parent, weights hash
MATERIALIZED = "tuneloop-materialized.json"  # written last: the copy is complete and verified
LOCK_SUFFIX = ".tuneloop-lock"  # registered models that are promotion locks (see aliases.py), hidden in listings


def get_version(uri: ModelUri | str) -> Any:
    """The MLflow ModelVersion a reference names (an alias resolved now), with errors that list what exists."""
    uri = parse_model_uri(uri) if isinstance(uri, str) else uri
    c = store.client()
    model = registered_model(c, uri.name)
    if uri.alias:
        if uri.alias not in model.aliases:
            have = ", ".join(f"@{a}" for a in sorted(model.aliases)) or "none"
            raise TuneloopError(f"{uri}: {uri.name} has no alias @{uri.alias} (aliases: {have})")
        return c.get_model_version(uri.name, str(model.aliases[uri.alias]))
    if uri.version is None:
        raise TuneloopError(f"{uri}: give a version or an alias")
    try:
        return c.get_model_version(uri.name, uri.version)
    except Exception as e:
        raise TuneloopError(f"{uri}: {uri.name} has no version {uri.version}") from e


def registered_model(c: Any, name: str) -> Any:
    """The registered model, or an error naming the closest registered name and listing what exists."""
    try:
        return c.get_registered_model(name)
    except Exception as e:
        if not store.not_found(e):
            raise TuneloopError(f"cannot read registered model {name!r} from {store.registry_uri()}: {e}") from e
        from tuneloop.config.trainer_fields import closest

        names = [m.name for m in c.search_registered_models(max_results=1000) if not m.name.endswith(LOCK_SUFFIX)]
        hint = closest(name, names)
        did = f" (did you mean {hint}?)" if hint else ""
        listed = ", ".join(names[:20]) or "none yet"
        raise TuneloopError(
            f"no registered model {name!r}{did} in {store.registry_uri()}; registered: {listed}"
        ) from None


def cache_dir(name: str, version: str) -> Path:
    """Per store, so two MLflow servers' `quickstart/1` never share a directory."""
    tag = hashlib.sha256(store.registry_uri().encode()).hexdigest()[:10]
    return workspace.home() / "registry" / tag / name / str(version)


def materialize(ref: ModelUri | str, say: Callable[[str], None] = print) -> Path:
    """The local, verified copy of a registered version (downloaded on first use)."""
    mv = get_version(ref)
    target = cache_dir(mv.name, mv.version)
    if (target / MATERIALIZED).is_file():
        return target
    say(f"downloading models:/{mv.name}/{mv.version} into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        import mlflow.artifacts

        got = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=mv.source, dst_path=str(staging), tracking_uri=store.tracking_uri()
            )
        )
        root = got if got.is_dir() else staging
        _verify(root, mv)
        _repoint_adapter(root, say)
        marker = {"name": mv.name, "version": mv.version, "source": mv.source, "registry": store.registry_uri()}
        (root / MATERIALIZED).write_text(json.dumps(marker, indent=2) + "\n")
        if (target / MATERIALIZED).is_file():  # another process finished first
            return target
        shutil.rmtree(target, ignore_errors=True)
        root.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _verify(root: Path, mv: Any) -> None:
    from tuneloop.models.references import weights_sha256

    expected = (mv.tags or {}).get("tuneloop.weights_sha256")
    if not expected:
        return
    found = weights_sha256(str(root))
    if found != expected:
        got = f"{found[:12]}…" if found else "no weights"
        raise TuneloopError(
            f"models:/{mv.name}/{mv.version}: its weights changed after registration (sha256 {got} vs "
            f"{expected[:12]}… recorded); the artifacts at {mv.source} were overwritten — register the model again"
        )


def _repoint_adapter(root: Path, say: Callable[[str], None]) -> None:
    """Point a registered adapter at this machine's copy of its base (recorded portably in MODEL_RECORD)."""
    config_file = root / "adapter_config.json"
    record_file = root / MODEL_RECORD
    if not config_file.is_file() or not record_file.is_file():
        return
    base = json.loads(record_file.read_text()).get("adapter_base")
    if not base:
        return
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(local_base(base, say))
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def local_base(base: str, say: Callable[[str], None] = print) -> str:
    """A portable base reference (built-in name, hub id, local path, or models:/ URI) as a loadable path."""
    if base.startswith("models:/"):
        return str(full_model(materialize(base, say)))
    from tuneloop.config.schema import ModelRef
    from tuneloop.models.loading import resolve

    return resolve(ModelRef(name=base), Path.cwd(), log=say)


def full_model(path: Path) -> Path:
    """A full checkpoint: the directory itself, or for an adapter its registered `merged/` copy, else a merge
    made once beside it (training starts from full weights; LoRA stages add their own adapter)."""
    if not (path / "adapter_config.json").is_file():
        return path
    from tuneloop.models.loading import merge_adapter

    return merge_adapter(path, path / "merged")


def registered_from(path: str | Path) -> dict[str, Any] | None:
    """{name, version, ...} when `path` is (inside) a materialized registry version."""
    p = Path(path)
    for candidate in (p, p.parent):
        marker = candidate / MATERIALIZED
        if marker.is_file():
            return json.loads(marker.read_text())
    return None
