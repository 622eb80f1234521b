"""Evaluation reports: results.json -> report.md (for reviews and diffs) and report.html (one self-contained file).

Reads only the results dict (format tuneloop-eval/1), so an old run can be re-rendered without models or data.
matplotlib, numpy, jinja2 and rich are imported inside functions: `tuneloop run` imports this module early.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.cost import describe
from tuneloop.plots import PALETTE, plot_style, svg

# Okabe-Ito: stays distinguishable under the common colour-vision deficiencies
RAW_METRICS = {"perplexity"}  # not in points (0-100), so plotted on an axis of their own
NO_PRICE = "n/a (priced by the endpoint's provider)"
SERVING = {
    "wall_s": "wall time (s)",
    "tokens_per_s": "generated tokens/s",
    "generated_tokens": "generated tokens",
    "prompt_tokens": "prompt tokens",
    "cost_per_1k_tokens": "cost per 1k tokens",
}
LENGTHS = {
    "tokens_mean": "tokens mean",
    "tokens_median": "tokens median",
    "tokens_p95": "tokens p95",
    "tokens_max": "tokens max",
    "words_mean": "words mean",
    "empty_share": "empty",
}
CLIP = {"md": 160, "html": 600}  # characters of prompt/prediction/reference shown per worst example


@dataclass
class _Table:
    """What both renderers draw; kinds[i] is the CSS class of column i ("num" right-aligns, "text" is monospace)."""

    headers: list[str]
    rows: list[list[str]]
    kinds: list[str]


def write_reports(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write report.md and report.html into out_dir (the folder of results.json); returns {"md": ..., "html": ...}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html"}
    paths["md"].write_text(render_markdown(results), encoding="utf-8")
    paths["html"].write_text(render_html(results), encoding="utf-8")
    return paths


def _labels(results: dict) -> list[str]:
    return [m["label"] for m in results["models"]]


def _task(model: dict, task: str) -> dict:
    return (model.get("tasks") or {}).get(task) or {}


def _metric(model: dict, task: str, name: str) -> dict:
    return (_task(model, task).get("metrics") or {}).get(name) or {}


def _union(items: Any) -> list[str]:
    """Keys in order of first appearance: models may not all have run every task or metric."""
    return list(dict.fromkeys(k for keys in items for k in keys))


def _task_names(results: dict) -> list[str]:
    return _union(m.get("tasks") or {} for m in results["models"])


def _metric_names(results: dict, task: str) -> list[str]:
    return _union(_task(m, task).get("metrics") or {} for m in results["models"])


def _comparisons(results: dict) -> dict[tuple[str, str, str], dict]:
    return {(c["task"], c["metric"], c["b"]): c for c in results.get("comparisons") or []}


def _created(results: dict) -> str:
    raw = results.get("created") or ""
    try:
        stamp = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return raw
    return (stamp.astimezone(UTC) if stamp.tzinfo else stamp).strftime("%Y-%m-%d %H:%M UTC")


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "–"


def _p(p: float | None) -> str:
    return "–" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def _pm(metric: dict) -> str:
    """Value ± half the 95% CI width (the terminal has room for one number per model)."""
    if metric.get("value") is None:
        return "–"
    ci = metric.get("ci")
    return f"{metric['value']:.2f} ± {(ci[1] - ci[0]) / 2:.2f}" if ci else f"{metric['value']:.2f}"


def _verdict(comparison: dict) -> str:
    """✓ when the diff's CI excludes zero on the good side of the metric, ✗ on the bad side, '' when it straddles."""
    ci = comparison.get("ci")
    if not ci or ci[0] <= 0 <= ci[1]:
        return ""
    return "✓" if (ci[0] > 0) == bool(comparison.get("higher_is_better", True)) else "✗"


def _diff(comparison: dict) -> str:
    text = f"{comparison['diff']:+.2f}"
    if comparison.get("ci"):
        p = _p(comparison.get("p_value"))
        text += f" {_ci(comparison['ci'])} p{p if p.startswith('<') else '=' + p}"
    return f"{text} {_verdict(comparison)}".rstrip()


def _clip(text: Any, limit: int) -> str:
    if isinstance(text, list):  # a chat prompt: the turns before the answer
        text = "\n".join(f"{t.get('role')}: {t.get('content')}" if isinstance(t, dict) else str(t) for t in text)
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _models_table(results: dict) -> _Table:

    rows = [
        [
            m["label"],
            str(m.get("ref", "")),
            str(m.get("backend", "")),
            str(m.get("weights_sha256") or "")[:12],
            describe(m["cost"]) if m.get("cost") else "–",
        ]
        for m in results["models"]
    ]
    return _Table(["model", "ref", "backend", "weights sha256", "evaluation cost"], rows, ["", "text", "", "text", ""])


def _metrics_table(results: dict, task: str) -> _Table:
    labels, comparisons = _labels(results), _comparisons(results)
    headers = ["metric"]
    for label in labels:
        headers += [label, "95% CI"]
    for label in labels[1:]:
        headers += [f"Δ {label} − {labels[0]}", "Δ 95% CI", "p"]
    rows = []
    for name in _metric_names(results, task):
        better = next((_metric(m, task, name) for m in results["models"] if _metric(m, task, name)), {})
        row = [name if better.get("higher_is_better", True) else f"{name} (lower is better)"]
        for model in results["models"]:
            metric = _metric(model, task, name)
            row += [_num(metric.get("value")), _ci(metric.get("ci"))]
        for label in labels[1:]:
            c = comparisons.get((task, name, label))
            diff = [f"{c['diff']:+.2f} {_verdict(c)}".rstrip(), _ci(c.get("ci")), _p(c.get("p_value"))] if c else []
            row += diff or ["–"] * 3
        rows.append(row)
    return _Table(headers, rows, [""] + ["num"] * (len(headers) - 1))


def _cell(key: str, value: Any) -> str:
    if key == "cost_per_1k_tokens":
        return NO_PRICE if value is None else f"{value:.4f}"
    return f"{value * 100:.1f}%" if key.endswith("_share") and value is not None else _num(value, 1)


def _section_table(results: dict, task: str, section: str, headers: dict[str, str] | None = None) -> _Table | None:
    """One row per model, one column per figure any model reported (serving, lengths); None when none did."""
    found = _union(_task(m, task).get(section) or {} for m in results["models"])
    keys = (
        [k for k in headers if k in found or (k == "cost_per_1k_tokens" and section == "serving")] if headers else found
    )
    if not found:
        return None
    rows = [
        [m["label"], *(_cell(k, (_task(m, task).get(section) or {}).get(k)) for k in keys)] for m in results["models"]
    ]
    names = [(headers or {}).get(k, k.replace("_", " ")) for k in keys]
    return _Table(["model", *names], rows, [""] + ["num"] * len(keys))


def _confusion_columns(classification: dict) -> list[str]:
    labels, width = list(classification["labels"]), len(classification["confusion"][0])
    return [*labels, "(unparsed)"] if width == len(labels) + 1 else labels[:width]


def _confusion_table(classification: dict) -> _Table:
    columns = _confusion_columns(classification)
    pairs = zip(classification["labels"], classification["confusion"], strict=False)
    rows = [[label, *map(_num, counts)] for label, counts in pairs]
    return _Table(["true \\ predicted", *columns], rows, [""] + ["num"] * len(columns))


def _worst_table(examples: list[dict], limit: int, prompts: bool) -> _Table:
    """Prompt (HTML only: long), prediction (absent for perplexity, which scores the reference) and reference."""
    keys = ["prompt"] * prompts + ["prediction"] * any(e.get("prediction") is not None for e in examples)
    rows = []
    for e in examples:
        texts = [*(e.get(k) for k in keys), " ‖ ".join(map(str, e.get("references") or []))]
        rows.append([str(e.get("index", "")), _num(e.get("score")), *(_clip(t, limit) for t in texts)])
    return _Table(["index", "score", *keys, "reference"], rows, ["num", "num"] + ["text"] * (len(keys) + 1))


def _task_view(results: dict, task: str, fmt: str) -> dict[str, Any]:
    """Everything one task section shows, as tables both renderers draw."""
    first = next(_task(m, task) for m in results["models"] if _task(m, task))
    data = first.get("data") or {}
    rows = first.get("rows")
    about = [first.get("kind"), f"{rows:,} rows" if rows is not None else None]
    about.append("/".join(str(data[k]) for k in ("source", "task", "split") if data.get(k)))
    metrics = [(n, m) for mod in results["models"] for n, m in (_task(mod, task).get("metrics") or {}).items()]
    signatures = {n: m["signature"] for n, m in metrics if m and m.get("signature")}
    confusions = [
        {"label": m["label"], "table": _confusion_table(c), "cls": {"parse_failures": 0, "notes": [], **c}}
        for m in results["models"]
        if (c := _task(m, task).get("classification")) and c.get("confusion")
    ]
    worst = [
        {"metric": name, "label": m["label"], "count": len(ex), "table": _worst_table(ex, CLIP[fmt], fmt == "html")}
        for name in _metric_names(results, task)
        for m in results["models"]
        if (ex := (_task(m, task).get("worst") or {}).get(name))
    ]
    return {
        "name": task,
        "about": " · ".join(a for a in about if a),
        "metrics": _metrics_table(results, task),
        "signatures": signatures,
        "serving": _section_table(results, task, "serving", SERVING),
        "lengths": _section_table(results, task, "lengths", LENGTHS),
        "confusions": confusions,
        "worst": worst,
    }


def _md(text: str) -> str:
    """A markdown table cell: HTML-escaped (renderers pass raw HTML through), pipes escaped, one line."""
    return " ⏎ ".join(html.escape(text, quote=False).replace("|", "\\|").splitlines())


def _md_table(table: _Table) -> list[str]:
    align = ["--:" if k == "num" else "---" for k in table.kinds]
    lines = ["| " + " | ".join(map(_md, table.headers)) + " |", "| " + " | ".join(align) + " |"]
    return [*lines, *("| " + " | ".join(map(_md, row)) + " |" for row in table.rows), ""]


def render_markdown(results: dict) -> str:
    """report.md: the same numbers as the HTML report, readable in a terminal, a PR or a diff between runs."""
    suite = results.get("suite") or {}
    title = f"# Evaluation report: {_md(suite.get('name', ''))} ({_created(results)})"
    out = [title, "", f"suite `{suite.get('path', '')}` · {' vs '.join(map(_md, _labels(results)))}", ""]
    if gate := results.get("gate"):
        out += [f"## Gate: {'PASSED' if gate.get('passed') else 'FAILED'}", ""]
        for rule in gate.get("rules") or []:
            mark = "✓ passed" if rule.get("passed") else "✗ FAILED"
            detail = f" — {_md(str(rule['detail']))}" if rule.get("detail") else ""
            out.append(f"- {mark}: {_md(str(rule.get('rule', '')))}{detail}")
        out.append("")
    out += ["## Models", "", *_md_table(_models_table(results))]
    for task in _task_names(results):
        view = _task_view(results, task, "md")
        out += [f"## Task: {_md(task)}", "", view["about"], "", "### Metrics (95% CI)", "", *_md_table(view["metrics"])]
        out += [f"- {name} signature: `{sig}`" for name, sig in view["signatures"].items()]
        out.append("")
        for key, title in (("serving", "Serving"), ("lengths", "Lengths")):
            out += [f"### {title}", "", *_md_table(view[key])] if view[key] else []
        for c in view["confusions"]:
            out += [f"### Confusion matrix: {_md(c['label'])}", "", *_md_table(c["table"])]
            notes = [f"- note: {_md(str(n))}" for n in c["cls"]["notes"]]
            out += [f"Parse failures: {c['cls']['parse_failures']}", *notes, ""]
        for w in view["worst"]:
            out += [f"### Worst {w['count']} by {_md(w['metric'])}: {_md(w['label'])}", "", *_md_table(w["table"])]
    return "\n".join(out).rstrip() + "\n"


def _bars(model: dict, task: str, group: list[str]) -> Any:
    """(row, value, CI low, CI high) per metric of group this model has; a metric without CI gets no error bar."""
    import numpy as np

    rows = [
        (j, m["value"], *(m.get("ci") or [m["value"]] * 2))
        for j, n in enumerate(group)
        if (m := _metric(model, task, n)).get("value") is not None
    ]
    return np.array(rows, dtype=float).reshape(-1, 4).T


def _metrics_plot(results: dict, task: str) -> str:
    """Horizontal bars with 95% CI error bars, one bar per model per metric; perplexity gets its own axis."""
    import numpy as np
    from matplotlib.figure import Figure

    names, models = _metric_names(results, task), results["models"]
    groups = [g for g in ([n for n in names if n not in RAW_METRICS], [n for n in names if n in RAW_METRICS]) if g]
    if not groups:
        return ""
    bar = 0.8 / len(models)
    with plot_style():
        fig = Figure(figsize=(10, 1.0 + sum(0.25 + 0.24 * len(models) * len(g) for g in groups)), layout="constrained")
        axes = fig.subplots(len(groups), 1, squeeze=False, height_ratios=[len(g) + 0.6 for g in groups])[:, 0]
        for ax, group in zip(axes, groups, strict=True):
            raw, data = group[0] in RAW_METRICS, [_bars(m, task, group) for m in models]
            right = max((d[3].max() for d in data if d.size), default=1) * 1.12 if raw else 100
            for i, (model, (rows, values, lows, highs)) in enumerate(zip(models, data, strict=True)):
                ys = rows + (i - (len(models) - 1) / 2) * bar
                err = np.clip(
                    [values - lows, highs - values], 0, None
                ).tolist()  # a percentile CI may miss the point estimate
                ax.barh(
                    ys,
                    values,
                    bar * 0.92,
                    xerr=err,
                    color=PALETTE[i % len(PALETTE)],
                    label=model["label"],
                    capsize=2.5,
                    error_kw={"elinewidth": 0.9, "ecolor": "#222"},
                )
                for y, v, hi in zip(ys, values, highs, strict=True):
                    ax.text(max(hi, v) + right * 0.01, y, f"{v:.1f}", va="center", fontsize=7.5, color="#333")
            ax.set_yticks(range(len(group)), group)
            ax.set_ylim(len(group) - 0.5, -0.5)  # first metric on top
            ax.set_xlabel("perplexity (lower is better)" if raw else "points (0-100)")
            ax.set_xlim(0, right)
            ax.grid(axis="x", alpha=0.3)
            ax.set_axisbelow(True)
            ax.spines[["top", "right"]].set_visible(False)
        fig.suptitle(f"{task}: metrics with 95% CI", fontweight="bold")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", frameon=False)
        return svg(fig)


def _confusion_plot(label: str, classification: dict) -> str:
    """Heatmap with the count in every cell; the "(unparsed)" column shows outputs no label could be read from."""
    import numpy as np
    from matplotlib.figure import Figure

    matrix = np.asarray(classification["confusion"])
    columns, rows = _confusion_columns(classification), classification["labels"]
    with plot_style():
        fig = Figure(figsize=(1.6 + 0.7 * len(columns), 1.3 + 0.5 * len(rows)), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(matrix, cmap="Blues", vmin=0, aspect="auto")
        for (r, c), n in np.ndenumerate(matrix):
            ax.text(c, r, str(n), ha="center", va="center", color="white" if n > matrix.max() / 2 else "#111")
        ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{label}: confusion matrix", fontweight="bold")
        fig.colorbar(image, ax=ax, shrink=0.85, label="examples")
        return svg(fig)


# ---------------------------------------------------------------- HTML

HTML_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --zebra: #f6f8fa; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg);
  max-width: 1100px; margin: 2rem auto; padding: 0 1.25rem; line-height: 1.45; }
h1 { margin: 0 0 .2rem; } h2 { border-bottom: 1px solid var(--line); padding-bottom: .3rem; margin-top: 2.5rem; }
h3 { margin: 1.4rem 0 .4rem; font-size: 1.05rem; } .meta { color: var(--muted); margin-top: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .3rem 0 1rem; font-size: .88rem; }
th, td { border: 1px solid var(--line); padding: .28rem .6rem; text-align: left; vertical-align: top; }
th { background: #eef1f4; font-weight: 600; } tbody tr:nth-child(even) { background: var(--zebra); }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: .8rem;
  white-space: pre-wrap; overflow-wrap: anywhere; min-width: 12rem; max-width: 26rem; }
td.good { color: #1a7f37; font-weight: 600; } td.bad { color: #cf222e; font-weight: 600; }
.gate { padding: .6rem 1rem; border-radius: 6px; border: 1px solid; margin: 1rem 0 1.5rem; }
.gate.passed { background: #dafbe1; border-color: #4ac26b; }
.gate.failed { background: #ffebe9; border-color: #ff8182; }
.gate ul { margin: .3rem 0 0; padding-left: 1.2rem; } .gate strong { font-size: 1.1rem; }
.plots { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; margin: .5rem 0; }
.plots svg { max-width: 100%; height: auto; }
details { margin: .35rem 0; } summary { cursor: pointer; font-weight: 600; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .8rem; overflow-wrap: anywhere; }
</style></head><body>
{%- macro table(t) %}<div class="scroll"><table><thead><tr>
{%- for h in t.headers %}<th class="{{ t.kinds[loop.index0] }}">{{ h }}</th>{% endfor %}</tr></thead><tbody>
{%- for row in t.rows %}<tr>{% for cell in row %}{% set kind = t.kinds[loop.index0] %}
<td class="{{ kind }}{{ ' good' if kind == 'num' and '✓' in cell }}{{ ' bad' if kind == 'num' and '✗' in cell }}">
{{- cell }}</td>{% endfor %}</tr>{% endfor %}</tbody></table></div>{% endmacro %}
<h1>{{ title }}</h1>
<p class="meta">{{ created }} · suite <code>{{ suite.path }}</code> · {{ models | join(" vs ") }}</p>
{% if gate %}<div class="gate {{ 'passed' if gate.passed else 'failed' }}">
<strong>Gate {{ "PASSED" if gate.passed else "FAILED" }}</strong><ul>
{% for r in gate.rules %}<li>{{ "✓" if r.passed else "✗ FAILED:" }} {{ r.rule }}
{%- if r.detail %} — {{ r.detail }}{% endif %}</li>
{% endfor %}</ul></div>{% endif %}
<h2>Models</h2>{{ table(models_table) }}
{% for t in tasks %}<section><h2>{{ t.name }}</h2><p class="meta">{{ t.about }}</p>
<h3>Metrics (95% CI)</h3>{{ table(t.metrics) }}
{% for name, sig in t.signatures.items() %}<p class="meta">{{ name }} signature: <code>{{ sig }}</code></p>{% endfor %}
<div class="plots">{{ t.plot }}</div>
{% for c in t.confusions %}{% if loop.first %}<h3>Classification</h3><div class="plots">{% endif %}<figure>{{ c.plot }}
<figcaption>{{ c.label }}: {{ c.cls.parse_failures }} parse failure(s)
{%- for n in c.cls.notes %}; {{ n }}{% endfor %}</figcaption>
</figure>{% if loop.last %}</div>{% endif %}{% endfor %}
{% if t.serving %}<h3>Serving</h3>{{ table(t.serving) }}{% endif %}
{% if t.lengths %}<h3>Lengths</h3>{{ table(t.lengths) }}{% endif %}
{% for w in t.worst %}{% if loop.first %}<h3>Worst examples</h3>{% endif %}
<details><summary>{{ w.metric }}: {{ w.label }} ({{ w.count }} worst)</summary>{{ table(w.table) }}</details>
{% endfor %}</section>
{% endfor %}</body></html>
"""


def render_html(results: dict) -> str:
    """report.html: one file with inline SVG plots and CSS (no network), every user text escaped by jinja2."""
    import jinja2
    from markupsafe import Markup

    tasks = []
    for task in _task_names(results):
        view = _task_view(results, task, "html")
        view["plot"] = Markup(_metrics_plot(results, task))
        for c in view["confusions"]:
            c["plot"] = Markup(_confusion_plot(c["label"], c["cls"]))
        tasks.append(view)
    suite = results.get("suite") or {}
    env = jinja2.Environment(autoescape=True)  # a key missing from results.json renders empty, never raises
    title, labels = f"Evaluation report: {suite.get('name', '')}", _labels(results)
    return env.from_string(HTML_TEMPLATE).render(
        title=title,
        created=_created(results),
        suite=suite,
        models=labels,
        gate=results.get("gate"),
        models_table=_models_table(results),
        tasks=tasks,
    )
