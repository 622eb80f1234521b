"""report.md / report.html / terminal summary from a hand-built results dict (shape: results.json, tuneloop-eval/1)."""

from __future__ import annotations

import copy
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tuneloop.eval.report import write_reports
from tuneloop.eval.summary import print_summary, summary_rows

REPO = Path(__file__).resolve().parents[2]
XSS = "<script>alert(1)</script>"


def _m(value: float, lo: float | None, hi: float | None, higher: bool = True, signature: str | None = None) -> dict:
    return {"value": value, "ci": None if lo is None else [lo, hi], "higher_is_better": higher, "signature": signature}


def _worst(metric: str, n: int = 10) -> list[dict]:
    rows = [
        {
            "index": 17 + i,
            "score": float(i),
            "prompt": f"Write a one-line synopsis for package pkg{i}:\nA long description of what pkg{i} does. " * 3,
            "prediction": XSS if i == 0 else f"tool for {metric} number {i} " * (8 if i == 1 else 1),
            "references": [f"reference synopsis {i} | with a pipe"],
        }
        for i in range(n)
    ]
    return rows


def _serving(wall: float, tokens: int) -> dict:
    return {
        "wall_s": wall,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "prompt_tokens": 30000,
        "cost_per_1k_tokens": None,
    }


def _model(label: str, shift: float) -> dict:
    gen = {"bleu": 12.3, "rougeL": 31.2, "chrf": 40.5, "similarity": 61.0}
    sig = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.5.1"
    return {
        "label": label,
        "ref": f"smollm2-135m-instruct<b>{label}</b>",
        "path": f"/runs/{label}",
        "backend": "transformers",
        "weights_sha256": "a672" * 16,
        "chat_template_sha256": "c0de" * 16,
        "tasks": {
            "synopsis": {
                "kind": "generation",
                "rows": 200,
                "data": {"source": "debian-descriptions", "task": "synopsis", "split": "test", "fingerprint": "f00"},
                "metrics": {
                    name: _m(v + shift, v + shift - 2.2, v + shift + 2.3, signature=sig if name == "bleu" else None)
                    for name, v in gen.items()
                },
                "serving": _serving(40.1 - shift, 4000),
                "lengths": {"tokens_mean": 12.3, "tokens_p95": 25, "words_mean": 9.1, "empty_share": 0.005},
                "worst": {name: _worst(name) for name in gen},
            },
            "section": {
                "kind": "classification",
                "rows": 300,
                "data": {"source": "debian-descriptions", "task": "section", "split": "test", "fingerprint": "b4r"},
                "metrics": {
                    "accuracy": _m(60.0 + shift, 54.3 + shift, 65.7 + shift),
                    "f1_macro": _m(48.0 + shift, 41.0 + shift, 55.2 + shift),
                    "roc_auc": _m(72.0 + shift / 2, 66.0 + shift / 2, 78.0 + shift / 2),
                },
                "serving": _serving(12.0, 900),
                "classification": {
                    "labels": ["admin", "devel", "libs"],
                    "confusion": [[70, 20, 5, 5], [15, 60, 20, 5], [10, 12, 76, 2]],
                    "parse_failures": 12,
                    "notes": [],
                },
                "worst": {"accuracy": _worst("accuracy", 3)},
            },
            "heldout-ppl": {
                "kind": "perplexity",
                "rows": 100,
                "data": {"source": "debian-descriptions", "task": "lm", "split": "test", "fingerprint": "b4z"},
                "metrics": {"perplexity": _m(18.4 - shift / 5, 17.9 - shift / 5, 19.0 - shift / 5, higher=False)},
                "serving": {"wall_s": 5.0},
                "worst": {"perplexity": [ex | {"prediction": None} for ex in _worst("perplexity", 2)]},
            },
        },
    }


def _comparison(task: str, metric: str, a: float, b: float, ci: list[float], p: float, higher: bool = True) -> dict:
    return {
        "task": task,
        "metric": metric,
        "a": "base",
        "b": "fine-tuned",
        "a_value": a,
        "b_value": b,
        "diff": b - a,
        "ci": ci,
        "p_value": p,
        "higher_is_better": higher,
    }


@pytest.fixture
def results() -> dict:
    """base vs fine-tuned on a generation, a classification and a perplexity task, with a failing gate."""
    base, tuned = _model("base", 0.0), _model("fine-tuned", 11.1)
    tuned["tasks"]["synopsis"]["metrics"]["chrf"] = _m(39.0, 36.5, 41.4)  # chrF got worse
    comparisons = []
    for task in ("synopsis", "section", "heldout-ppl"):
        for name, m in base["tasks"][task]["metrics"].items():
            b = tuned["tasks"][task]["metrics"][name]["value"]
            diff = b - m["value"]
            ci = [diff - 0.5, diff + 0.5] if name != "roc_auc" else [-1.5, 12.0]
            comparisons.append(
                _comparison(task, name, m["value"], b, ci, 0.2 if name == "roc_auc" else 0.001, m["higher_is_better"])
            )
    return {
        "format": "tuneloop-eval/1",
        "created": "2026-11-25T15:00:00Z",
        "suite": {"name": "synopsis", "path": "configs/eval/synopsis.yaml", "config": {}},
        "models": [base, tuned],
        "comparisons": comparisons,
        "gate": {
            "passed": False,
            "rules": [
                {"rule": "rougeL on synopsis must beat base", "passed": True, "detail": "+11.10 [10.60, 11.60]"},
                {"rule": "chrf on synopsis must not drop", "passed": False, "detail": "-1.50, CI excludes 0"},
            ],
        },
    }


def test_write_reports_writes_md_and_html_into_out_dir(results, tmp_path):
    paths = write_reports(results, tmp_path / "run")
    assert paths == {"md": tmp_path / "run/report.md", "html": tmp_path / "run/report.html"}
    assert all(p.stat().st_size > 0 for p in paths.values())


def test_markdown_has_values_cis_diffs_serving_confusion_and_failed_gate(results, tmp_path):
    md = write_reports(results, tmp_path)["md"].read_text()
    assert md.startswith("# Evaluation report: synopsis (2026-11-25 15:00 UTC)\n\nsuite `configs/eval/synopsis.yaml`")
    assert md.index("## Gate: FAILED") < md.index("## Task: synopsis")
    assert "✗ FAILED: chrf on synopsis must not drop — -1.50, CI excludes 0" in md
    assert "✓ passed: rougeL on synopsis must beat base" in md
    row = next(line for line in md.splitlines() if line.startswith("| rougeL |"))
    assert row == "| rougeL | 31.20 | [29.00, 33.50] | 42.30 | [40.10, 44.60] | +11.10 ✓ | [10.60, 11.60] | 0.001 |"
    assert "| chrf | 40.50 | [38.30, 42.80] | 39.00 | [36.50, 41.40] | -1.50 ✗ |" in md
    assert "| roc_auc |" in md and "| +5.55 | [-1.50, 12.00] |" in md  # CI straddles 0: no marker
    assert "| perplexity (lower is better) | 18.40 |" in md
    assert "bleu signature: `nrefs:1|case:mixed" in md
    assert "n/a (priced by the endpoint's provider)" in md and "| 40.1 | 99.8 | 4,000 | 30,000 |" in md
    assert "| true \\ predicted | admin | devel | libs | (unparsed) |" in md
    assert "| devel | 15 | 60 | 20 | 5 |" in md and "Parse failures: 12" in md
    assert "| 0.5% |" in md  # empty_share as a percentage
    assert "### Worst 10 by rougeL: fine-tuned" in md
    ppl_worst = md.split("### Worst 2 by perplexity: base")[1]
    assert "| index | score | reference |" in ppl_worst  # perplexity scores the reference: no prediction column
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md and "<script" not in md
    assert "reference synopsis 0 \\| with a pipe" in md  # a pipe in user text does not split the table
    assert all(len(line) < 1000 for line in md.splitlines())  # long predictions are clipped


def test_html_is_self_contained_with_one_svg_per_plot(results, tmp_path):
    page = write_reports(results, tmp_path)["html"].read_text()
    # metrics chart per task (3) + confusion heatmap per model for the classification task (2)
    assert page.count("<svg") == 5
    assert not re.search(r"<(script|link|img)\b|@import|url\(\s*['\"]?https?:", page, flags=re.IGNORECASE)
    assert "Gate FAILED" in page and "chrf on synopsis must not drop" in page
    assert page.count("<details>") == 2 * (4 + 1 + 1)  # worst examples per metric and model
    assert '<td class="num good">+11.10 ✓</td>' in page and '<td class="num bad">-1.50 ✗</td>' in page


def test_html_escapes_predictions_and_model_refs(results, tmp_path):
    page = write_reports(results, tmp_path)["html"].read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower()
    assert "smollm2-135m-instruct&lt;b&gt;base&lt;/b&gt;" in page and "<b>base</b>" not in page


def test_html_escapes_hostile_labels_task_names_and_gate_text(results, tmp_path):
    hostile = copy.deepcopy(results)
    hostile["models"][1]["label"] = "<script>alert(2)</script>"
    hostile["models"][0]["tasks"]["x-->y<img src=x>"] = hostile["models"][0]["tasks"].pop("heldout-ppl")
    hostile["gate"]["rules"][0]["detail"] = "<iframe src=//evil>"
    del hostile["gate"]["rules"][1]["detail"]
    page = write_reports(hostile, tmp_path)["html"].read_text()
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page and "&lt;iframe" in page
    assert not re.search(r"<(script|img|iframe)\b", page, flags=re.IGNORECASE)
    assert "x-->y" not in page  # also not inside the comments matplotlib writes into its SVG


def test_single_model_renders_plain_scores_without_diffs(results, tmp_path):
    single = copy.deepcopy(results)
    single["models"] = single["models"][:1]
    del single["comparisons"], single["gate"], single["suite"]["path"], single["models"][0]["weights_sha256"]
    single["models"][0]["tasks"]["synopsis"]["metrics"]["evaluate:meteor"] = _m(22.0, None, None)  # no CI
    single["models"][0]["tasks"]["synopsis"]["worst"]["bleu"][0]["prompt"] = [
        {"role": "user", "content": "Describe vim"}
    ]
    paths = write_reports(single, tmp_path)
    md = paths["md"].read_text()
    assert "| rougeL | 31.20 | [29.00, 33.50] |\n" in md
    assert "| evaluate:meteor | 22.00 | – |" in md
    assert "Gate" not in md and "Δ" not in md
    page = paths["html"].read_text()
    assert page.count("<svg") == 4 and "user: Describe vim" in page
    rows = summary_rows(single)
    assert ("synopsis", "evaluate:meteor", "22.00") in rows and ("synopsis", "rougeL", "31.20 ± 2.25") in rows


def test_three_models_get_a_diff_column_each_and_missing_pieces_render_as_dashes(results, tmp_path):
    three = copy.deepcopy(results)
    third = copy.deepcopy(three["models"][1])
    third["label"] = "dpo"
    del third["tasks"]["section"], third["tasks"]["synopsis"]["metrics"]["bleu"]  # not every model runs everything
    third["tasks"]["synopsis"]["metrics"]["rougeL"]["value"] = None  # a metric that could not be computed
    three["models"].append(third)
    three["models"][0]["tasks"]["empty"] = {"kind": "generation", "rows": 0, "metrics": {}}
    three["comparisons"].append(_comparison("synopsis", "chrf", 40.5, 41.0, [-0.2, 1.2], 0.3) | {"b": "dpo"})
    md = write_reports(three, tmp_path)["md"].read_text()
    assert "| Δ fine-tuned − base | Δ 95% CI | p | Δ dpo − base | Δ 95% CI | p |" in md
    assert "| bleu | 12.30 | [10.10, 14.60] | 23.40 | [21.20, 25.70] | – | – | +11.10 ✓ |" in md
    rows = {(r[0], r[1]): r for r in summary_rows(three)}
    assert rows["synopsis", "chrf"][-1] == "+0.50 [-0.20, 1.20] p=0.300"
    assert rows["section", "accuracy"][4] == "–" and rows["synopsis", "rougeL"][4] == "–"


def test_summary_rows_one_per_task_metric_with_direction_markers(results):
    rows = summary_rows(results)
    assert len(rows) == 4 + 3 + 1
    by_metric = {(r[0], r[1]): r for r in rows}
    assert by_metric["synopsis", "rougeL"] == (
        "synopsis",
        "rougeL",
        "31.20 ± 2.25",
        "42.30 ± 2.25",
        "+11.10 [10.60, 11.60] p=0.001 ✓",
    )
    assert by_metric["synopsis", "chrf"][-1].endswith("✗")
    assert by_metric["section", "roc_auc"][-1] == "+5.55 [-1.50, 12.00] p=0.200"
    assert by_metric["heldout-ppl", "perplexity"][-1].endswith("✓")  # lower perplexity is the good direction


def test_print_summary_prints_table_and_gate(results):
    console = Console(file=io.StringIO(), record=True, width=200, color_system="truecolor")
    print_summary(results, console)
    text = console.export_text(clear=False)
    assert "Δ fine-tuned − base [95% CI] p" in text and "+11.10 [10.60, 11.60] p=0.001 ✓" in text
    assert "gate FAILED" in text and "✗ chrf on synopsis must not drop" in text
    assert "\x1b[32m" in console.export_text(styles=True)  # the ✓ cell is green


def _browser() -> str | None:
    return next(filter(None, map(shutil.which, ["chromium-headless-shell", "chromium", "google-chrome"])), None)


@pytest.mark.integration
def test_screenshot_script_renders_report_to_png(results, tmp_path):
    assert _browser(), "CI installs chromium-headless-shell (.ci/run); locally: apt-get install chromium-headless-shell"
    html_path = write_reports(results, tmp_path)["html"]
    png = tmp_path / "report.png"
    subprocess.run([sys.executable, REPO / "scripts/screenshot.py", html_path, png, "--width", "1200"], check=True)
    from PIL import Image

    with Image.open(png) as image:
        image.load()  # decodes the whole file: a truncated or corrupt PNG fails here
        assert image.format == "PNG" and image.width == 1200  # the viewport asked for (device scale 1)
        assert image.height > 800  # full_page: the whole report, longer than the viewport
        gray = image.convert("L")
        low, high = gray.getextrema()
        assert high - low > 100  # text on a background, not a blank page
        assert len(gray.getcolors(maxcolors=256 * 256) or []) > 16  # anti-aliased text and plots, not a flat fill
