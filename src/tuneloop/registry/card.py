"""The model card: a README.md registered with every version (and shown as its description in MLflow), written
from what the run recorded, so it cannot disagree with the numbers."""

from __future__ import annotations

from typing import Any

from tuneloop.config.schema import Recipe
from tuneloop.cost import describe
from tuneloop.rundir import RunSummary


def _short(sha: str | None) -> str:
    return f"`{sha[:12]}…`" if sha else "—"


def _f(v: Any, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def model_card(
    recipe: Recipe,
    summary: RunSummary,
    results: dict[str, Any] | None,
    record: dict[str, Any],
    tags: dict[str, str],
) -> str:
    """Markdown: what the model is, what it came from, how it was trained, how it scored, what it cost."""
    base = summary.base_model
    lines = [f"# {record['name']}", ""]
    if recipe.description:
        lines += [recipe.description, ""]
    kind = "LoRA adapter" if record["kind"] == "adapter" else "full weights"
    last = recipe.stages[-1]
    if last.peft and record["kind"] == "adapter":
        kind += f" (r {last.peft.r}, alpha {last.peft.alpha}, {last.peft.target_modules})"
    code = tags.get("tuneloop.code.commit")
    dirty = " (uncommitted changes)" if tags.get("tuneloop.code.dirty") == "true" else ""
    rows = [
        ("base model", f"{base.get('ref', recipe.base_model.name)} (weights sha256 {_short(base.get('sha256'))})"),
        ("parent version", f"`models:/{record['parent']}`" if record.get("parent") else "—"),
        ("weights", f"{kind}, sha256 {_short(record.get('weights_sha256'))}"),
        ("recipe", f"{recipe.name}, sha256 {_short(tags.get('tuneloop.recipe_sha256'))}"),
        ("code", f"`{code[:12]}`{dirty}" if code else "not in a git checkout"),
        ("training run", f"`{tags.get('tuneloop.run_dir', '')}` (MLflow run `{tags.get('tuneloop.run_id', '')}`)"),
        ("cost", _cost_line(summary.cost)),
    ]
    if summary.smoke:
        rows.append(("smoke run", "tiny random model of the base architecture: for checking the path only"))
    lines += ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    lines += [
        "## Training",
        "",
        "| stage | method | data fingerprints | steps | train loss | eval loss | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary.stages:
        fps = ", ".join(f"{k} `{v}`" for k, v in (s.data_fingerprints or {}).items())
        lines.append(
            f"| {s.stage} | {s.method} | {fps} | {s.steps} | {_f(s.loss_first)} → {_f(s.loss_last)} | "
            f"{_f(s.eval_loss_before)} → {_f(s.eval_loss_after)} | {_f(s.tokens_per_s)} |"
        )
    lines.append("")
    if results:
        lines += _evaluation(results)
    uri = f"models:/{record['name']}/<version>"
    lines += [
        "## Use",
        "",
        "```bash",
        f"tuneloop eval -m {uri} --suite {tags.get('tuneloop.recipe_path', 'RECIPE')}",
        f"tuneloop registry lineage {record['name']}@<version>",
        f"tuneloop registry pull {uri}      # prints the local directory (transformers/peft load it)",
        "```",
        "",
    ]
    return "\n".join(lines)


def _cost_line(cost: dict[str, Any]) -> str:
    total = cost.get("total") or cost.get("training") or {}
    if not total:
        return "—"
    parts = [describe(total)]
    for part in ("training", "evaluation"):
        if cost.get(part):
            parts.append(f"{part} {cost[part]['money']:.4g} {cost[part]['currency']}")
    return "; ".join(parts)


def _evaluation(results: dict[str, Any]) -> list[str]:
    models = results.get("models") or []
    if not models:
        return []
    name = (results.get("suite") or {}).get("name", "")
    labels = [m["label"] for m in models]
    comps = {(c["task"], c["metric"]): c for c in results.get("comparisons") or []}
    head = "| task | metric | " + " | ".join(labels) + (" | Δ [95% CI] | p |" if comps else " |")
    lines = [f"## Evaluation (suite {name})", "", head, "|" + "---|" * (head.count("|") - 1)]
    for task, body in (models[-1].get("tasks") or {}).items():
        for metric in body.get("metrics") or {}:
            cells = []
            for m in models:
                mv = ((m.get("tasks") or {}).get(task, {}).get("metrics") or {}).get(metric) or {}
                ci = mv.get("ci") or [None, None]
                value = mv.get("value")
                shown = "—" if value is None else f"{value:.2f}"
                if value is not None and None not in ci:
                    shown += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
                cells.append(shown)
            row = f"| {task} | {metric} | " + " | ".join(cells)
            c = comps.get((task, metric))
            if comps:
                row += (
                    f" | {c['diff']:+.2f} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] | {c['p_value']:.3f}"
                    if c and None not in (c.get("ci") or [None])
                    else " | — | —"
                )
            lines.append(row + " |")
    gate = results.get("gate")
    if gate:
        lines += ["", f"Gate: **{'passed' if gate['passed'] else 'FAILED'}**", ""]
        lines += [f"- {'✓' if r['passed'] else '✗'} {r['rule']} — {r['detail']}" for r in gate["rules"]]
    lines.append("")
    return lines
