"""A check's report: report.json (every number) and report.html (the decision first, then why: the embedding
test, the descriptors, the prompts least like the reference, and the AUC over earlier checks), with inline SVG plots
so the file can be mailed or attached to a ticket and opens with no network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.plots import PALETTE, plot_style, svg

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>monitor {{ r.monitor }} · {{ r.checked_at }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222 }
table { border-collapse: collapse; margin: .5em 0 1.5em } td, th { border-bottom: 1px solid #ddd; padding: 4px 10px;
text-align: left } .muted { color: #666 } .fired { color: #b00020 } .held { color: #a06000 } .none { color: #1b7f3b }
code { background: #f4f4f4; padding: 0 3px }
</style></head><body>
<h1>Monitor <code>{{ r.monitor }}</code></h1>
<p class="muted">checked {{ r.checked_at }} · model {{ r.model or "—" }} · window: last {{ r.window.since }},
{{ r.window.requests }} request(s){% if r.reference %} · reference: {{ r.reference.what }}, {{ r.reference.rows }}
rows{% endif %}</p>
<h2 class="{{ r.decision.split()[0] }}">Decision: {{ r.decision }}</h2>
{% if r.reasons %}<ul>{% for reason in r.reasons %}<li>{{ reason }}</li>{% endfor %}</ul>{% endif %}
{% if r.held_until %}<p>Held by the cooldown until {{ r.held_until }}.</p>{% endif %}
{% if r.embedding %}
<h2>Embedding drift</h2>
<p>{{ r.embedding.test }}: ROC-AUC <b>{{ "%.3f"|format(r.embedding.roc_auc) }}</b> (drift above
{{ r.embedding.threshold }} with p &lt; {{ r.embedding.significance }}; p = {{ "%.2g"|format(r.embedding.p_value) }})
on {{ r.embedding.reference_rows }} reference and {{ r.embedding.window_rows }} window rows.</p>
<h3>Prompts least like the reference</h3>
<table><tr><th>classifier score</th><th>prompt</th></tr>
{% for e in r.embedding.most_unlike_reference %}<tr><td>{{ "%.2f"|format(e.score) }}</td><td>{{ e.prompt }}</td></tr>
{% endfor %}</table>
<h2>Descriptors</h2>
<table><tr><th>descriptor</th><th>reference</th><th>window</th><th>test</th><th>p-value</th><th>drift</th></tr>
{% for d in r.descriptors %}<tr><td>{{ d.descriptor }}</td>
{% if d.skipped %}<td colspan="5" class="muted">{{ d.skipped }}</td>{% else %}
<td>{{ show(d.reference) }}</td><td>{{ show(d.window) }}</td>
<td>{{ d.test }} <span class="muted">({{ d.summary }})</span></td>
<td>{{ "%.3g"|format(d.p_value) }}</td><td>{{ "yes" if d.drift else "no" }}</td>{% endif %}</tr>
{% endfor %}</table>
{{ length_plot }}
{% endif %}
{% if r.signals %}<h2>Other signals</h2><pre>{{ signals }}</pre>{% endif %}
{% if history_plot %}<h2>Earlier checks</h2>{{ history_plot }}{% endif %}
</body></html>
"""


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def write_report(report: dict[str, Any], out: Path, history: list[dict[str, Any]]) -> Path:
    """report.json and report.html in `out`; `history` is the monitor's earlier checks (newest first)."""
    import jinja2
    from markupsafe import Markup

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    env = jinja2.Environment(autoescape=True)
    html = env.from_string(TEMPLATE).render(
        r=report,
        show=_show,
        signals=json.dumps(report.get("signals"), indent=1, default=str),
        length_plot=Markup(_length_plot(report)),
        history_plot=Markup(_history_plot(report, history)),
    )
    (out / "report.html").write_text(html)
    return out


def _length_plot(report: dict[str, Any]) -> str:
    data = report.get("plots_data")
    if not data:
        return ""
    from matplotlib.figure import Figure

    with plot_style():
        fig = Figure(figsize=(7, 2.6), layout="constrained")
        ax = fig.subplots()
        top = max(max(data["reference_prompt_words"], default=1), max(data["window_prompt_words"], default=1))
        bins = list(range(0, top + 10, max(1, (top + 10) // 40)))
        ax.hist(
            data["reference_prompt_words"], bins=bins, density=True, alpha=0.55, color=PALETTE[0], label="reference"
        )
        ax.hist(data["window_prompt_words"], bins=bins, density=True, alpha=0.55, color=PALETTE[1], label="window")
        ax.set_xlabel("prompt length (words)")
        ax.set_yticks([])
        ax.legend()
        return svg(fig)


def _history_plot(report: dict[str, Any], history: list[dict[str, Any]]) -> str:
    points = [(h["ts"], h["embedding_auc"], h["decision"]) for h in reversed(history) if h["embedding_auc"] is not None]
    if report.get("embedding"):
        from datetime import datetime

        points.append(
            (datetime.fromisoformat(report["checked_at"]), report["embedding"]["roc_auc"], report["decision"])
        )
    if len(points) < 2:
        return ""
    from matplotlib.figure import Figure

    with plot_style():
        fig = Figure(figsize=(7, 2.4), layout="constrained")
        ax = fig.subplots()
        ax.plot([p[0] for p in points], [p[1] for p in points], "-o", color=PALETTE[0], ms=3, label="ROC-AUC")
        fired = [p for p in points if p[2] == "fired"]
        ax.scatter([p[0] for p in fired], [p[1] for p in fired], color=PALETTE[5], zorder=3, label="trigger fired")
        threshold = report["embedding"]["threshold"] if report.get("embedding") else 0.55
        ax.axhline(threshold, color="grey", ls="--", lw=0.8)
        ax.set_ylabel("embedding ROC-AUC")
        ax.legend(fontsize=8)
        fig.autofmt_xdate()
        return svg(fig)
