"""The evaluation summary printed in the terminal after `tuneloop eval`, `run` and `registry promote`: one row per
task and metric, with CIs and the comparison's verdict (report.md and report.html carry the whole of it)."""

from __future__ import annotations

from typing import Any

from tuneloop.eval.report import _comparisons, _diff, _labels, _metric, _metric_names, _pm, _task_names


def summary_rows(results: dict) -> list[tuple[str, ...]]:
    """One row per (task, metric): task, metric, each model's value ± half its 95% CI, then for each later model
    the diff vs models[0] with CI, p-value and ✓ (CI of the diff excludes 0 on the good side) or ✗ (bad side)."""
    comparisons, later = _comparisons(results), _labels(results)[1:]
    rows = []
    for task in _task_names(results):
        for name in _metric_names(results, task):
            cells = [task, name, *(_pm(_metric(m, task, name)) for m in results["models"])]
            cells += [_diff(c) if (c := comparisons.get((task, name, label))) else "–" for label in later]
            rows.append(tuple(cells))
    return rows


def print_summary(results: dict, console: Any = None) -> None:
    """The table `tuneloop run` prints at the end, with the gate's verdict under it."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    labels = _labels(results)
    # task names go in rows of their own, not a column, so two models fit an 80-column terminal
    table = Table(
        title=Text(f"evaluation: {(results.get('suite') or {}).get('name', '')}", style="bold"),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("metric")
    for label in labels:
        table.add_column(Text(label), justify="right")
    for label in labels[1:]:
        table.add_column(Text(f"Δ {label} − {labels[0]} [95% CI] p"), justify="right", no_wrap=True)
    task = None
    for row in summary_rows(results):
        if row[0] != task:
            task = row[0]
            table.add_row(Text(task, style="bold"))
        diffs = row[2 + len(labels) :]
        styles = ["green" if d.endswith("✓") else "red" if d.endswith("✗") else "" for d in diffs]
        table.add_row(
            Text(f"  {row[1]}"),
            *map(Text, row[2 : 2 + len(labels)]),
            *(Text(d if s else f"{d}  ", s) for d, s in zip(diffs, styles, strict=True)),
        )
    console.print(table)
    if gate := results.get("gate"):
        passed = bool(gate.get("passed"))
        console.print(Text(f"gate {'PASSED' if passed else 'FAILED'}", style="bold green" if passed else "bold red"))
        for rule in gate.get("rules") or []:
            mark, style = ("✓", "green") if rule.get("passed") else ("✗", "red")
            detail = f" — {rule['detail']}" if rule.get("detail") else ""
            console.print(Text.assemble((f"  {mark} ", style), f"{rule.get('rule', '')}{detail}"))
