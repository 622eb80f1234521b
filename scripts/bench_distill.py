"""Distillation benchmark: does the half-depth student keep the teacher's quality, and how much faster is it?

Runs recipes/distill.yaml (SFT teacher → student with every second layer, off-policy distillation), or reuses a
finished run (`--run-dir`). Quality comes from the run's own evaluation (ROUGE-L on the 100 test descriptions,
with the paired bootstrap CI of the difference). Speed: both models generate a fixed number of tokens (greedy,
`min_new_tokens = max_new_tokens`, so both do the same work) for the same test prompts, at batch 1 and batch 16,
alternating teacher and student, median of the repeats. Appends a section to docs/benchmarks.md.

    python scripts/bench_distill.py                       # ~25 min on 2 CPU cores
    python scripts/bench_distill.py --run-dir .tuneloop/runs/distill/20261202-150000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from bench_train import machine  # noqa: E402


def run_recipe() -> Path:
    subprocess.run([sys.executable, "-m", "tuneloop", "run", "recipes/distill.yaml"], check=True, cwd=REPO)
    runs = sorted(p for p in (REPO / ".tuneloop/runs/distill").iterdir() if not p.name.endswith("-smoke"))
    return runs[-1]


def prompts(tokenizer, rows: int) -> list[str]:
    from tuneloop.data import builtin

    fmt = builtin.task("debian-descriptions", "synopsis").format
    out = []
    with (REPO / "data/debian-descriptions/test.jsonl").open() as f:
        for line, _ in zip(f, range(rows), strict=False):
            row = json.loads(line)
            messages = [
                {"role": "system", "content": fmt.system},
                {"role": "user", "content": fmt.prompt.format_map(row)},
            ]
            out.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return out


def generation_seconds(model, tokenizer, texts: list[str], batch: int, new_tokens: int) -> float:
    import torch

    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            model.generate(
                **enc,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, help="a finished run of recipes/distill.yaml to measure")
    parser.add_argument("--rows", type=int, default=32, help="test prompts per speed measurement")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO / "docs/benchmarks.md")
    a = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = (a.run_dir or run_recipe()).resolve()
    summary = json.loads((run / "summary.json").read_text())
    distill = summary["stages"][-1]
    results = json.loads((run / "eval" / "results.json").read_text())
    scores = {m["label"]: m["tasks"]["synopsis"]["metrics"] for m in results["models"]}
    rows = results["models"][0]["tasks"]["synopsis"]["rows"]
    teacher_rouge = scores["sft"]["rougeL"]["value"]
    student_rouge = scores["fine-tuned"]["rougeL"]["value"]
    diff = next(c for c in results["comparisons"] if c["metric"] == "rougeL")

    teacher_dir = run / "stages/sft/merged"  # the adapter folded in: what would be served
    student_dir = Path(distill["model_dir"])
    tok = AutoTokenizer.from_pretrained(student_dir, padding_side="left")
    models = {
        "teacher": AutoModelForCausalLM.from_pretrained(teacher_dir).eval(),
        "student": AutoModelForCausalLM.from_pretrained(student_dir).eval(),
    }
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    layers = {k: m.config.num_hidden_layers for k, m in models.items()}
    texts = prompts(tok, a.rows)
    speed: dict[tuple[str, int], list[float]] = {}
    for batch in (1, 16):
        for model in models.values():  # warm-up: first calls pay one-off allocation
            generation_seconds(model, tok, texts[:batch], batch, 4)
        for r in range(a.repeats):
            for name, model in models.items():
                s = generation_seconds(model, tok, texts, batch, a.new_tokens)
                tps = len(texts) * a.new_tokens / s
                speed.setdefault((name, batch), []).append(tps)
                print(f"batch {batch:2d} run {r + 1}: {name:7s} {tps:7.1f} generated tokens/s", flush=True)
    med = {k: statistics.median(v) for k, v in speed.items()}
    kept = student_rouge / teacher_rouge if teacher_rouge else float("nan")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    d = distill["distillation"]
    lines = [
        f"\n### Distillation: half-depth student — {time.strftime('%Y-%m-%d')} "
        f"(commit {commit.strip() or 'unknown'})\n",
        f"Machine: {machine()}; torch threads {torch.get_num_threads()}.  ",
        f"Run: `recipes/distill.yaml` ({run.name}): teacher = SFT (LoRA, merged) of SmolLM2-135M-Instruct, "
        f"{layers['teacher']} layers, {params['teacher'] / 1e6:.1f}M parameters; student = the teacher's layers "
        f"{d['kept_layers']} ({layers['student']} layers, {params['student'] / 1e6:.1f}M parameters), "
        f"{d['mode']} distillation (beta {d['beta']:g}: forward KL) for {distill['steps']} steps "
        f"({distill['train_runtime_s'] / 60:.1f} min). Quality: the run's evaluation on {rows} test descriptions. "
        f"Speed: {a.rows} test prompts, {a.new_tokens} generated tokens each (forced), greedy, median of "
        f"{a.repeats} alternating runs.\n",
        "| | teacher | student | student / teacher |",
        "|---|---|---|---|",
        f"| ROUGE-L (test, {rows} rows) | {teacher_rouge:.2f} | {student_rouge:.2f} | **{kept:.1%}** "
        f"(Δ {diff['diff']:+.2f} [{diff['ci'][0]:+.2f}, {diff['ci'][1]:+.2f}]) |",
    ]
    for name in ("chrf", "synopsis_rules"):
        t, s = scores["sft"][name]["value"], scores["fine-tuned"][name]["value"]
        lines.append(f"| {name} | {t:.2f} | {s:.2f} | {s / t if t else float('nan'):.1%} |")
    for batch in (1, 16):
        t, s = med[("teacher", batch)], med[("student", batch)]
        runs = ", ".join(f"{x:.0f}" for x in speed[("student", batch)])
        lines.append(f"| generated tokens/s, batch {batch} | {t:.1f} | {s:.1f} (runs {runs}) | **{s / t:.2f}×** |")
    lines.append(
        f"| parameters | {params['teacher'] / 1e6:.1f}M | {params['student'] / 1e6:.1f}M | "
        f"{params['student'] / params['teacher']:.0%} |"
    )
    text = "\n".join(lines) + "\n"
    print(text)
    with a.output.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
