"""What a sweep found: every trial (finished, pruned, failed, refused by the budget) with its values and cost, the
Pareto front of quality against cost, the trial picked by the user's rule, and `report.html` with PNG plots
(Pareto front, optimisation history, parameter importances from Optuna, where the budget went)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from tuneloop.config.sweep import Sweep
from tuneloop.sweep import budget as B

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "queued"}


def trial_rows(study: Any, sweep: Sweep) -> list[dict[str, Any]]:
    """One row per trial, in order, with its outcome in tuneloop's words."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        outcome = a.get("outcome") or STATES.get(t.state.name, t.state.name.lower())
        if t.state.name == "FAIL" and outcome not in ("not started", "failed", "interrupted"):
            outcome = "failed"  # a worker that died (heartbeat) or an error outside the executor
            a = {**a, "reason": a.get("reason") or "worker stopped answering (heartbeat); retried"}
        if t.state.name == "RUNNING":
            outcome = "running"
        values = dict(a.get("values") or {})
        spent = B.spent_of(t)
        progress = a.get("progress") or []
        rows.append(
            {
                "number": t.number,
                "outcome": outcome,
                "params": dict(t.params),
                "values": values,
                "cost": spent,
                "reason": a.get("reason"),
                "steps": a.get("steps") or (progress[-1][0] if progress else None),
                "progress": progress,
                "run_dir": a.get("run_dir"),
                "retry_of": t.system_attrs.get("failed_trial"),
            }
        )
    return rows


def _quality(row: dict[str, Any], sweep: Sweep) -> float | None:
    return row["values"].get(sweep.metric_objectives()[0].label())


def cost_key(sweep: Sweep) -> str:
    c = sweep.cost_objective()
    return c.cost if c and c.cost else "money"


def pareto_front(rows: list[dict[str, Any]], sweep: Sweep) -> list[dict[str, Any]]:
    """Finished trials that no other finished trial beats on every objective (metrics, and cost)."""
    done = [
        r
        for r in rows
        if r["outcome"] == "complete" and all(o.label() in r["values"] for o in sweep.metric_objectives())
    ]
    key = cost_key(sweep)

    def vector(r: dict[str, Any]) -> list[float]:
        v = [r["values"][o.label()] * (1 if o.direction == "maximize" else -1) for o in sweep.metric_objectives()]
        return [*v, -r["cost"][key]]  # higher is better throughout; cost always counts (it is what was paid)

    front = []
    for r in done:
        a = vector(r)
        beaten = any(
            all(x >= y for x, y in zip(vector(o), a, strict=True)) and vector(o) != a for o in done if o is not r
        )
        if not beaten:
            front.append(r)
    return sorted(front, key=lambda r: r["cost"][key])


def choose(
    rows: list[dict[str, Any]], sweep: Sweep, max_cost: float | None = None, within: float | None = None
) -> tuple[dict[str, Any] | None, str]:
    """The trial the user's rule picks, and the rule in words: highest quality (under `max_cost`), or the cheapest
    within `within` points of the best."""
    objective = sweep.metric_objectives()[0]
    key = cost_key(sweep)
    sign = 1 if objective.direction == "maximize" else -1
    max_cost = max_cost if max_cost is not None else sweep.best.max_cost
    within = within if within is not None else sweep.best.within
    pool = [r for r in rows if r["outcome"] == "complete" and _quality(r, sweep) is not None]
    words = f"{'highest' if sign > 0 else 'lowest'} {objective.label()}"
    if max_cost is not None:
        pool = [r for r in pool if r["cost"][key] <= max_cost]
        words += f" with {key} <= {max_cost:g}"
    if not pool:
        return None, words
    best = max(pool, key=lambda r: (sign * _quality(r, sweep), -r["cost"][key]))
    if within is None:
        return best, words
    close = [r for r in pool if sign * (_quality(best, sweep) - _quality(r, sweep)) <= within]
    return min(close, key=lambda r: r["cost"][key]), f"cheapest within {within:g} of the {words}"


def spent_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Where the budget went: spend per trial outcome."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out[r["outcome"]] = B.add(out.get(r["outcome"], B.zero()), r["cost"])
    return out


def summary_metrics(study: Any, sweep: Sweep) -> dict[str, float]:
    rows = trial_rows(study, sweep)
    total = B.zero()
    for r in rows:
        total = B.add(total, r["cost"])
    out = {f"sweep/spent/{k}": v for k, v in total.items()}
    out["sweep/trials"] = float(len([r for r in rows if r["outcome"] != "not started"]))
    for outcome in ("complete", "pruned", "failed"):
        out[f"sweep/trials_{outcome}"] = float(sum(r["outcome"] == outcome for r in rows))
    best, _ = choose(rows, sweep)
    if best is not None:
        out["sweep/best/trial"] = float(best["number"])
        for k, v in best["values"].items():
            out[f"sweep/best/{k}"] = float(v)
        out[f"sweep/best/{cost_key(sweep)}"] = best["cost"][cost_key(sweep)]
    return out


# ---------------------------------------------------------------- plots and HTML


def write_report(study: Any, out: Path, sweep: Sweep) -> Path:
    """report.html, report.json and the PNGs, in `<out>/report/`."""
    import matplotlib

    matplotlib.use("Agg")
    rows = trial_rows(study, sweep)
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    front = pareto_front(rows, sweep)
    best, rule = choose(rows, sweep)
    plots = {
        "pareto.png": _plot_pareto(rows, front, best, sweep),
        "history.png": _plot_history(rows, sweep),
        "importance.png": _plot_importance(study, sweep),
        "cost.png": _plot_cost(rows, sweep),
    }
    for name, fig in plots.items():
        if fig is not None:
            fig.savefig(folder / name, dpi=110, bbox_inches="tight")
            __import__("matplotlib.pyplot").pyplot.close(fig)
    report = {
        "sweep": study.study_name,
        "objectives": [o.label() for o in sweep.objectives],
        "budget": sweep.budget.model_dump(exclude_none=True),
        "spent": spent_summary(rows),
        "best": {"rule": rule, "trial": best["number"] if best else None},
        "front": [r["number"] for r in front],
        "trials": rows,
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / "report.html").write_text(_html(report, rows, front, best, rule, sweep, [n for n in plots if plots[n]]))
    return folder


def _plot_pareto(rows, front, best, sweep: Sweep):
    import matplotlib.pyplot as plt

    key, label = cost_key(sweep), sweep.metric_objectives()[0].label()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    done = [r for r in rows if r["outcome"] == "complete" and label in r["values"]]
    ax.scatter([r["cost"][key] for r in done], [r["values"][label] for r in done], c="#4c72b0", label="finished")
    pruned = [r for r in rows if r["outcome"] == "pruned" and r["progress"]]
    ax.scatter(
        [r["cost"][key] for r in pruned],
        [r["progress"][-1][1] for r in pruned],
        marker="x",
        c="#999999",
        label="pruned (last intermediate score)",
    )
    failed = [r for r in rows if r["outcome"] == "failed"]
    if failed:
        floor = min([r["values"][label] for r in done] or [0.0])
        ax.scatter([r["cost"][key] for r in failed], [floor] * len(failed), marker="v", c="#c44e52", label="failed")
    if front:
        ax.plot(
            [r["cost"][key] for r in front],
            [r["values"][label] for r in front],
            "-o",
            c="#dd8452",
            label="Pareto front",
            zorder=3,
        )
    if best:
        ax.scatter([best["cost"][key]], [best["values"][label]], s=180, facecolors="none", edgecolors="k", label="best")
    for r in done:
        ax.annotate(
            f"#{r['number']}",
            (r["cost"][key], r["values"][label]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xlabel(key.replace("_", "-"))
    ax.set_ylabel(label)
    ax.set_title("quality against cost")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _plot_history(rows, sweep: Sweep):
    import matplotlib.pyplot as plt

    label = sweep.metric_objectives()[0].label()
    sign = 1 if sweep.metric_objectives()[0].direction == "maximize" else -1
    key = cost_key(sweep)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    spent, best, xs, ys, dots = 0.0, None, [], [], []
    for r in rows:
        spent += r["cost"][key]
        v = r["values"].get(label) if r["outcome"] == "complete" else None
        if v is not None:
            dots.append((spent, v))
            best = v if best is None or sign * v > sign * best else best
        if best is not None:
            xs.append(spent)
            ys.append(best)
    if dots:
        ax.scatter(*zip(*dots, strict=True), c="#4c72b0", s=14, label="trial")
    ax.step(xs, ys, where="post", c="#dd8452", label="best so far")
    ax.set_xlabel(f"cumulative {key.replace('_', '-')}")
    ax.set_ylabel(label)
    ax.set_title("optimisation history")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _plot_importance(study: Any, sweep: Sweep):
    """Optuna's fANOVA importances of the first metric objective (needs a few finished trials)."""
    import matplotlib.pyplot as plt
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.values]
    if len(done) < 3 or not done[0].params:
        return None
    try:
        importance = optuna.importance.get_param_importances(
            study, target=lambda t: t.values[0], evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except Exception:  # too few distinct values to fit the importance model
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * len(importance)))
    names = list(importance)[::-1]
    ax.barh([n.split(".", 2)[-1] for n in names], [importance[n] for n in names], color="#55a868")
    ax.set_xlabel(f"importance for {sweep.metric_objectives()[0].label()} (fANOVA)")
    ax.set_title("parameter importances")
    return fig


def _plot_cost(rows, sweep: Sweep):
    import matplotlib.pyplot as plt

    key = cost_key(sweep)
    colors = {"complete": "#4c72b0", "pruned": "#999999", "failed": "#c44e52", "running": "#8172b3"}
    shown = [r for r in rows if r["outcome"] != "not started"]
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.bar(
        [f"#{r['number']}" for r in shown],
        [r["cost"][key] for r in shown],
        color=[colors.get(r["outcome"], "#cccccc") for r in shown],
    )
    limit = B.limit(sweep.budget).get(key)
    total = sum(r["cost"][key] for r in shown)
    title = f"spent {total:.3g} {key}" + (f" of {limit:g} ({100 * total / limit:.0f}%)" if limit else "")
    ax.set_title(title)
    ax.set_ylabel(key.replace("_", "-"))
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), fontsize=8)
    return fig


def _html(report, rows, front, best, rule, sweep: Sweep, images: list[str]) -> str:
    e = html.escape
    key = cost_key(sweep)
    labels = [o.label() for o in sweep.metric_objectives()]
    params = sorted({k for r in rows for k in r["params"]})
    head = "".join(f"<th>{e(p.split('.', 2)[-1])}</th>" for p in params)
    head += "".join(f"<th>{e(label)}</th>" for label in labels)
    body = []
    on_front = {r["number"] for r in front}
    for r in rows:
        cells = "".join(f"<td>{e(_fmt(r['params'].get(p)))}</td>" for p in params)
        cells += "".join(f"<td>{e(_fmt(r['values'].get(label)))}</td>" for label in labels)
        mark = " ★" if best and r["number"] == best["number"] else (" ◆" if r["number"] in on_front else "")
        body.append(
            f"<tr class='{e(r['outcome'].replace(' ', '-'))}'><td>#{r['number']}{mark}</td><td>{e(r['outcome'])}</td>"
            f"{cells}<td>{r['cost'][key]:.4g}</td><td>{e(str(r['steps'] or ''))}</td>"
            f"<td>{e(r['reason'] or '')}</td></tr>"
        )
    spent = "".join(
        f"<tr><td>{e(k)}</td><td>{v['money']:.4g}</td><td>{v['device_hours']:.4g}</td></tr>"
        for k, v in report["spent"].items()
    )
    budget = ", ".join(f"{k} {v}" for k, v in report["budget"].items())
    imgs = "".join(f"<img src='{e(n)}' alt='{e(n)}'>" for n in images)
    chosen = f"trial #{best['number']}" if best else "no finished trial"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>sweep {e(report["sweep"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:3px 7px;font-size:13px}}tr.pruned{{color:#777}}tr.failed{{color:#b22}}
tr.not-started{{color:#aaa}}img{{max-width:48%;margin:4px}}</style></head><body>
<h1>sweep {e(report["sweep"])}</h1>
<p>objectives: {e(", ".join(report["objectives"]))} · budget: {e(budget)}</p>
<p><b>best</b> ({e(rule)}): {e(chosen)} · Pareto front: {e(", ".join(f"#{n}" for n in report["front"]))}</p>
{imgs}
<h2>where the budget went</h2><table><tr><th>trials</th><th>money</th><th>device-hours</th></tr>{spent}</table>
<h2>trials</h2><p>★ best by the rule · ◆ on the Pareto front</p>
<table><tr><th>trial</th><th>outcome</th>{head}<th>{e(key)}</th><th>steps</th><th>reason</th></tr>
{"".join(body)}</table></body></html>
"""


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def print_table(rows: list[dict[str, Any]], sweep: Sweep, console: Any, best: dict[str, Any] | None = None) -> None:
    """The trials as a rich table: values, cost, outcome and reason (parameters by their last key)."""
    from rich.table import Table

    key = cost_key(sweep)
    labels = [o.label() for o in sweep.metric_objectives()]
    params = sorted({k for r in rows for k in r["params"]})
    table = Table(title=None, show_lines=False, pad_edge=False)
    for col in ["trial", "outcome", *[_header(p) for p in params], *labels, key, "steps"]:
        table.add_column(col, no_wrap=True, min_width=min(len(col), 28))
    table.add_column("reason", overflow="fold", ratio=1)
    for r in rows:
        mark = " ★" if best and r["number"] == best["number"] else ""
        table.add_row(
            f"#{r['number']}{mark}",
            r["outcome"],
            *[_short(r["params"].get(p)) for p in params],
            *[_fmt(r["values"].get(label)) for label in labels],
            f"{r['cost'][key]:.4g}",
            str(r["steps"] or ""),
            r["reason"] or "",
        )
    console.print(table)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else _fmt(v)


def _header(key: str) -> str:
    """A parameter's column: its last key, without TRL's `per_device_train_` prefix (`batch_size`)."""
    return key.rsplit(".", 1)[-1].removeprefix("per_device_train_")
