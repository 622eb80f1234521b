"""Lineage: from a registered version back through its parents (stage-2 training, retraining) to the base model,
with the data, recipe, code and cost of every step — read from the tags registration wrote."""

from __future__ import annotations

import json
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.models.registered import get_version
from tuneloop.models.uri import ModelUri
from tuneloop.untrusted import safe


def chain(uri: ModelUri | str) -> list[Any]:
    """The version and its registered ancestors, newest first."""
    found = [get_version(uri)]
    seen = {(found[0].name, str(found[0].version))}
    while True:
        parent = (found[-1].tags or {}).get("tuneloop.parent")
        if not parent:
            return found
        name, _, version = parent.rpartition("/")
        if (name, version) in seen:
            raise TuneloopError(f"lineage of {uri} loops at {parent}")
        seen.add((name, version))
        try:
            found.append(get_version(f"models:/{parent}"))
        except TuneloopError:
            found.append(_Missing(name, version))
            return found


class _Missing:
    """A parent version that was deleted: lineage still names it."""

    def __init__(self, name: str, version: str) -> None:
        self.name, self.version, self.tags, self.aliases = name, version, {}, []
        self.creation_timestamp = None


def tree(uri: ModelUri | str) -> Any:
    """A rich Tree: each version with its facts, its parent nested inside, the base model at the bottom."""
    from rich.tree import Tree

    versions = chain(uri)
    root: Tree | None = None
    node: Tree | None = None
    for mv in versions:
        label = _label(mv)
        node = Tree(label) if root is None else node.add(f"[dim]trained from[/] {label}")
        root = root or node
        for line in facts(mv):
            node.add(line)
    last = versions[-1]
    tags = last.tags or {}
    base = tags.get("tuneloop.base_model")
    if base and not tags.get("tuneloop.parent"):
        digest = tags.get("tuneloop.base_model_sha256") or tags.get("tuneloop.base_model_commit")
        extra = (
            f" (weights sha256 {digest[:16]}…)"
            if tags.get("tuneloop.base_model_sha256")
            else (f" (commit {digest})" if digest else "")
        )
        node.add(f"[dim]trained from[/] base model [bold]{safe(base)}[/]{safe(extra)}")
    return root


def _label(mv: Any) -> str:
    if isinstance(mv, _Missing):
        return f"[bold]models:/{safe(mv.name)}/{safe(mv.version)}[/] [red](deleted from the registry)[/]"
    aliases = " ".join(f"@{a}" for a in sorted(mv.aliases or []))
    return f"[bold]models:/{safe(mv.name)}/{safe(mv.version)}[/] {safe(aliases)}".rstrip()


def facts(mv: Any) -> list[str]:
    """One line per fact registration recorded: recipe, run, code, data fingerprints, gate, metrics, cost; as rich
    markup with the tags' text escaped (`safe`), since anyone with access to MLflow may have written them."""
    tags = mv.tags or {}
    if not tags:
        return []
    lines = []
    recipe = tags.get("tuneloop.recipe")
    if recipe:
        sha = tags.get("tuneloop.recipe_sha256", "")
        lines.append(f"recipe {recipe} (sha256 {sha[:12]}…) {tags.get('tuneloop.recipe_path', '')}".rstrip())
    commit = tags.get("tuneloop.code.commit")
    if commit:
        dirty = ", uncommitted changes" if tags.get("tuneloop.code.dirty") == "true" else ""
        lines.append(f"code commit {commit[:12]}{dirty}")
    lines.append(f"run {tags.get('tuneloop.run_dir', '?')} (MLflow run {tags.get('tuneloop.run_id', '?')})")
    prefix = "tuneloop.data."
    data = [f"{k.removeprefix(prefix)} {v}" for k, v in sorted(tags.items()) if k.startswith(prefix)]
    if data:
        lines.append("data " + ", ".join(data))
    weights = tags.get("tuneloop.weights_sha256")
    if weights:
        lines.append(f"weights {tags.get('tuneloop.kind', '')} sha256 {weights[:16]}…")
    gate = tags.get("tuneloop.gate")
    if gate:
        lines.append(f"gate {gate}")
    metrics = json.loads(tags.get("tuneloop.metrics", "{}"))
    if metrics:
        lines.append("metrics " + ", ".join(f"{k} {metric_text(v)}" for k, v in metrics.items()))
    cost = json.loads(tags.get("tuneloop.cost", "{}"))
    if cost.get("money") is not None:
        hours = cost.get("device_hours") or 0
        lines.append(f"cost {cost['money']:.4g} {cost.get('currency', '')} · {hours:.4g} device-h")
    return [safe(line) for line in lines]


def metric_text(value: list[Any]) -> str:
    v, lo, hi = [*list(value), None, None, None][:3]
    if v is None:
        return "—"
    return f"{v:.1f} [{lo:.1f}, {hi:.1f}]" if lo is not None and hi is not None else f"{v:.1f}"
