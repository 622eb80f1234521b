"""Render an inspect report: rich tables for the terminal, and report.html (inline SVG plots, no network).

Reads only the report dict (tuneloop-data-inspect/1), so a report.json can be re-rendered anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.data.prepare import describe
from tuneloop.plots import PALETTE, plot_style, svg
from tuneloop.untrusted import safe, visible


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per split: the numbers a reader checks first."""
    rows = []
    for name, s in report["splits"].items():
        t, d = s["tokens"], s["duplicates"]
        overlap = s.get("overlap_with_train")
        langs = s["languages"]
        top = next(iter(langs), "")
        of = report.get("sampled_from", {}).get(name)
        rows.append(
            [
                name,
                str(s["rows"]) + (f" of {of:,}" if of else ""),
                f"{t.get('p50', 0):.0f} / {t.get('p95', 0):.0f} / {t.get('max', 0)}",
                _pct((t.get("truncated") or {}).get("share")),
                _pct(d["exact_share"]),
                _pct(d["near_share"]),
                "" if overlap is None else f"{overlap['rows']} ({_pct(overlap['share'])})",
                f"{top} {_pct(langs.get(top, 0) / max(1, s['rows']))}" if top else "",
                str(sum(p["count"] for p in s["problems"].values())),
            ]
        )
    return rows


HEADERS = ["split", "rows", "p50/p95/max", "truncated", "exact dup", "near dup", "in train", "language", "problems"]


def print_report(report: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(highlight=False)
    unit = next(iter(report["splits"].values()))["tokens"]["unit"] if report["splits"] else "tokens"
    title = safe(f"{report['source']}" + (f" ({report['task']})" if report.get("task") else ""))
    table = Table(
        title=f"{title}: length in {unit}; near = Jaccard >= {report['near_threshold']}; "
        "in train = exact or near copies of train rows"
    )
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("split", "language") else "right")
    for row in summary_rows(report):
        table.add_row(*map(safe, row))  # split names come from the data's files
    console.print(table)
    for name, s in report["splits"].items():
        for kind, p in s["problems"].items():
            rows = ", ".join(map(str, p["rows"])) + (" ..." if p["count"] > len(p["rows"]) else "")
            console.print(f"  [yellow]{safe(name)}[/]: {p['count']} × {safe(kind)} (rows {rows})", markup=True)
        if s.get("labels"):
            counts = s["labels"]["counts"]
            line = f"  {name} labels ({s['labels']['column']}): " + ", ".join(f"{k} {v}" for k, v in counts.items())
            console.print(visible(line), markup=False)  # the labels are the data's values


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "html": out_dir / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    paths["html"].write_text(render_html(report))
    return paths


def _length_plot(report: dict[str, Any]) -> str:
    import numpy as np
    from matplotlib.figure import Figure

    splits = report["splits"]
    if not splits:
        return ""
    unit = next(iter(splits.values()))["tokens"]["unit"]
    with plot_style():
        fig = Figure(figsize=(10, 3.2), layout="constrained")
        ax = fig.subplots()
        top = max((max(s["tokens"]["values"], default=0) for s in splits.values()), default=1)
        bins = np.linspace(0, max(top, 1), 40)
        for i, (name, s) in enumerate(splits.items()):
            values = s["tokens"]["values"]
            if values:
                ax.hist(
                    values,
                    bins=bins,
                    histtype="step",
                    linewidth=1.6,
                    density=True,
                    color=PALETTE[i % len(PALETTE)],
                    label=f"{name} ({len(values)})",
                )
        if report.get("max_length") and unit == "tokens":
            ax.axvline(report["max_length"], color="#D55E00", linestyle="--", linewidth=1)
            ax.text(
                report["max_length"],
                ax.get_ylim()[1] * 0.95,
                f" max_length {report['max_length']}",
                color="#D55E00",
                fontsize=8,
                va="top",
            )
        ax.set_xlabel(f"example length ({unit})")
        ax.set_ylabel("share of rows (density)")
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(frameon=False)
        fig.suptitle("Length per split", fontweight="bold")
        return svg(fig)


def _bar_plot(title: str, per_split: dict[str, dict[str, int]], top: int = 10) -> str:
    import numpy as np
    from matplotlib.figure import Figure

    totals: dict[str, int] = {}
    for counts in per_split.values():
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    keys = [k for k, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:top]]
    if not keys:
        return ""
    with plot_style():
        fig = Figure(figsize=(10, 0.9 + 0.28 * len(keys) * max(1, len(per_split)) ** 0.5), layout="constrained")
        ax = fig.subplots()
        bar = 0.8 / len(per_split)
        for i, (name, counts) in enumerate(per_split.items()):
            n = max(1, sum(counts.values()))
            shares = [100 * counts.get(k, 0) / n for k in keys]
            ys = np.arange(len(keys)) + (i - (len(per_split) - 1) / 2) * bar
            ax.barh(ys, shares, bar * 0.92, color=PALETTE[i % len(PALETTE)], label=name)
        ax.set_yticks(range(len(keys)), [visible(k) for k in keys])  # labels are the data's values
        ax.set_ylim(len(keys) - 0.5, -0.5)
        ax.set_xlabel("share of the split's rows (%)")
        ax.grid(axis="x", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(frameon=False, loc="lower right")
        fig.suptitle(title, fontweight="bold")
        return svg(fig)


HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.6em 0}td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right;
vertical-align:top}th{background:#f4f4f4}td.text{text-align:left;font-family:ui-monospace,monospace;font-size:12px;
white-space:pre-wrap;max-width:560px}td.l{text-align:left}h2{margin-top:1.6em;border-bottom:2px solid #0072B2}
.warn{color:#b35c00}.muted{color:#666}svg{max-width:100%;height:auto}</style></head><body>
<h1>{{ title }}</h1>
<p class="muted">languages: lingua on up to 5,000 sampled rows per split
· text columns: {{ report.text_columns|join(", ") }} · tokenizer: {{ report.tokenizer or "none (words)" }}
· near duplicates: Jaccard ≥ {{ report.near_threshold }} on word {{ report.ngram }}-grams (MinHash LSH)
{% if report.prepared %}· prepared: {{ report.prepared.fingerprint }}{% endif %}</p>
<table><tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for c in row %}<td{% if loop.first or loop.index == 8 %} class="l"{% endif %}>{{ c }}</td>
{% endfor %}</tr>{% endfor %}</table>
{{ length_plot }}{{ language_plot }}{{ label_plot }}
{% if report.prepared %}<h2>Preparation steps</h2><table><tr><th>#</th><th>step</th><th>what happened</th></tr>
{% for s in report.prepared.steps %}<tr><td>{{ s.index + 1 }}</td><td class="l">{{ s.step }}</td>
<td class="text">{{ s.line }}</td></tr>{% endfor %}</table>{% endif %}
{% for name, s in report.splits.items() %}<h2>{{ name }} ({{ s.rows }} rows)</h2>
{% if s.overlap_with_train %}<h3>Overlap with {{ report.train_split }}: {{ s.overlap_with_train.rows }} rows
({{ s.overlap_with_train.exact_rows }} exact, {{ s.overlap_with_train.near_rows }} near)</h3>
{% if s.overlap_with_train.examples %}<table><tr><th>row</th><th>{{ report.train_split }} row</th><th>Jaccard</th>
<th>text</th><th>{{ report.train_split }} text</th></tr>{% for e in s.overlap_with_train.examples %}<tr>
<td>{{ e.row }}</td><td>{{ e.train_row }}</td><td>{{ e.jaccard }}</td><td class="text">{{ e.text }}</td>
<td class="text">{{ e.train_text }}</td>
</tr>{% endfor %}</table>{% endif %}{% endif %}
<h3>Duplicates: {{ s.duplicates.exact_rows }} exact, {{ s.duplicates.near_rows }} near (incl. exact),
{{ s.duplicates.clusters }} clusters</h3>
{% if s.duplicates.largest %}<table><tr><th>size</th><th>rows</th><th>examples</th></tr>
{% for c in s.duplicates.largest %}<tr><td>{{ c.size }}</td><td class="l">{{ c.rows|join(", ") }}</td>
<td class="text">{{ c.examples|join("\n---\n") }}</td></tr>{% endfor %}</table>{% endif %}
{% if s.problems %}<h3 class="warn">Format problems</h3><table><tr><th>problem</th><th>rows</th><th>first rows</th></tr>
{% for k, p in s.problems.items() %}<tr><td class="l">{{ k }}</td><td>{{ p.count }}</td><td class="l">
{{ p.rows|join(", ") }}</td></tr>{% endfor %}</table>{% endif %}
<h3>Shortest and longest</h3><table><tr><th>row</th><th>{{ s.tokens.unit }}</th><th>text</th></tr>
{% for e in s.tokens.shortest + s.tokens.longest %}<tr><td>{{ e.row }}</td><td>{{ e.length }}</td>
<td class="text">{{ e.text }}</td></tr>{% endfor %}</table>
{% endfor %}</body></html>
"""


def render_html(report: dict[str, Any]) -> str:
    import jinja2
    from markupsafe import Markup

    splits = report["splits"]
    labels = {n: s["labels"]["counts"] for n, s in splits.items() if s.get("labels")}
    prepared = report.get("prepared")
    if prepared:
        prepared = dict(prepared, steps=[dict(s, line=describe(s)) for s in prepared["steps"]])
    title = f"Data report: {report['source']}" + (f" ({report['task']})" if report.get("task") else "")
    env = jinja2.Environment(autoescape=True)
    return env.from_string(HTML).render(
        title=title,
        report=dict(report, prepared=prepared),
        headers=HEADERS,
        rows=summary_rows(report),
        length_plot=Markup(_length_plot(report)),
        language_plot=Markup(_bar_plot("Languages (lingua)", {n: s["languages"] for n, s in splits.items()})),
        label_plot=Markup(_bar_plot("Label balance", labels) if labels else ""),
    )
