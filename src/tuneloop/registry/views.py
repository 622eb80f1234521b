"""Tables people read: registered models, the versions of one (aliases, key metrics with CIs, cost, parent),
one version in full, and the alias history. Names, tags, descriptions and reasons are whatever users wrote (into
MLflow too, not only through tuneloop): each goes through `safe`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from tuneloop.models.registered import LOCK_SUFFIX
from tuneloop.registry import aliases
from tuneloop.registry.lineage import facts, metric_text
from tuneloop.untrusted import safe

MAX_METRIC_COLUMNS = 3


def _when(ms: int | None) -> str:
    if not ms:
        return "—"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _aliases(model: Any, version: str) -> str:
    return safe(" ".join(f"@{a}" for a, v in sorted(model.aliases.items()) if str(v) == str(version)))


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms else None


def models(c: Any) -> list[dict[str, Any]]:
    """Registered models (not their promotion locks) with their champion, challenger and latest version."""
    found = []
    for m in sorted(c.search_registered_models(max_results=1000), key=lambda m: m.name):
        if m.name.endswith(LOCK_SUFFIX):
            continue
        versions = c.search_model_versions(f"name='{m.name}'")
        found.append(
            {
                "name": m.name,
                "versions": len(versions),
                "champion": m.aliases.get(aliases.CHAMPION),
                "challenger": m.aliases.get(aliases.CHALLENGER),
                "latest": max((int(v.version) for v in versions), default=None),
                "updated": _iso(m.last_updated_timestamp),
                "description": m.description or "",
            }
        )
    return found


def version_record(mv: Any) -> dict[str, Any]:
    """One version as JSON: its tuneloop tags decoded (metrics, cost and gate are JSON strings in MLflow)."""
    tags = {}
    for key, value in sorted((mv.tags or {}).items()):
        try:
            tags[key] = json.loads(value) if value.startswith(("[", "{")) else value
        except ValueError:
            tags[key] = value
    return {
        "name": mv.name,
        "version": str(mv.version),
        "aliases": sorted(mv.aliases or []),
        "created": _iso(mv.creation_timestamp),
        "source": getattr(mv, "source", None),
        "run_id": getattr(mv, "run_id", None),
        "tags": tags,
    }


def models_table(c: Any) -> Table:
    table = Table(title="registered models", title_justify="left")
    for col in ("name", "versions", "@champion", "@challenger", "latest", "updated", "description"):
        table.add_column(col, justify="right" if col in ("versions", "latest") else "left")
    for m in models(c):
        table.add_row(
            safe(m["name"]),
            str(m["versions"]),
            safe(m["champion"] or "—"),
            safe(m["challenger"] or "—"),
            str(m["latest"] or "—"),
            (m["updated"] or "—").replace("T", " ")[:16],
            safe(m["description"].splitlines()[0][:60]) if m["description"] else "",
        )
    return table


def versions_table(c: Any, name: str) -> Table:
    model = c.get_registered_model(name)
    versions = sorted(c.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version), reverse=True)
    gated: list[str] = []  # the metrics gates judge come first
    metric_names: list[str] = []
    for v in versions:
        tags = v.tags or {}
        gated += [m for m in json.loads(tags.get("tuneloop.gate.metrics", "[]")) if m not in gated]
        metric_names += [k for k in json.loads(tags.get("tuneloop.metrics", "{}")) if k not in metric_names]
    first = [k for k in metric_names if k.rpartition("/")[2] in gated or k in gated]
    shown = (first + [k for k in metric_names if k not in first])[:MAX_METRIC_COLUMNS]
    table = Table(title=f"{safe(name)}: versions (metrics: value [95% CI])", title_justify="left")
    table.add_column("v", justify="right", no_wrap=True)
    table.add_column("aliases", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("gate", no_wrap=True)
    for metric in shown:
        table.add_column(safe(metric), overflow="fold")
    table.add_column("cost", justify="right")
    table.add_column("parent", no_wrap=True)
    for v in versions:
        tags = v.tags or {}
        metrics = json.loads(tags.get("tuneloop.metrics", "{}"))
        cost = json.loads(tags.get("tuneloop.cost", "{}"))
        money = f"{cost['money']:.2g} {cost.get('currency', '')}" if cost.get("money") is not None else "—"
        gate = tags.get("tuneloop.gate", "—")
        gate = {"passed": "[green]passed[/]", "failed": "[red]failed[/]"}.get(gate, safe(gate))
        table.add_row(
            str(v.version),
            _aliases(model, v.version),
            _when(v.creation_timestamp)[5:],
            gate,
            *[metric_text(metrics[k]) if k in metrics else "—" for k in shown],
            safe(money),
            safe(tags.get("tuneloop.parent", "—")),
        )
    return table


def version_table(c: Any, mv: Any) -> Table:
    model = c.get_registered_model(mv.name)
    title = f"models:/{safe(mv.name)}/{safe(mv.version)} {_aliases(model, mv.version)}"
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("created", _when(mv.creation_timestamp))
    table.add_row("source", safe(mv.source))
    for line in facts(mv):
        key, _, value = line.partition(" ")
        table.add_row(key, value)  # facts are safe already
    detail = (mv.tags or {}).get("tuneloop.gate.detail")
    if detail:
        table.add_row("gate detail", safe(detail))
    return table


def history_table(c: Any, name: str) -> Table:
    table = Table(title=f"{safe(name)}: alias history (oldest first)", title_justify="left")
    for col in ("when", "alias", "from", "to", "action", "by"):
        table.add_column(col, no_wrap=True)
    table.add_column("reason / detail", overflow="fold")
    table.add_column("state", no_wrap=True)
    for e in aliases.history(c, name):
        action = safe(e["action"]) + (" [yellow](forced)[/]" if e.get("forced") else "")
        why = e.get("reason") or e.get("detail") or ""
        state = safe(e["state"]) if e["state"] == "done" else "[red]interrupted (no change)[/]"
        table.add_row(
            safe(e["at"].replace("T", " ").rstrip("Z")[:16]),
            safe("@" + e["alias"]),
            safe(e["from"] or "—"),
            safe(e["to"] or "—"),
            action,
            safe(e["by"]),
            safe(why if len(why) <= 90 else why[:89] + "…"),
            state,
        )
    return table
