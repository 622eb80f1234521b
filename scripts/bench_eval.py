"""Evaluation generation throughput: the transformers backend vs vLLM's offline engine on the same prompts.

    python scripts/bench_eval.py [--rows 200] [--max-new-tokens 32] [--batch-size 16] [--no-write]

Both backends answer the first N synopsis test prompts (configs/eval/synopsis.yaml) with the built-in
SmolLM2-135M-Instruct, greedily, from the same chat-template-rendered prompt text, through the same
`generate()` that `tuneloop eval` calls. Only `generate()` is timed; model load, engine start-up and a one-prompt
warm-up are reported apart as start-up. Generated tokens include each answer's end-of-answer token. Agreement is
the share of rows whose two greedy answers are identical. On a machine with CUDA both run on the GPU (transformers
in the dtype `tuneloop eval` loads, vLLM in its own choice). A dated section goes to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_train import machine  # same machine line as the other benchmark entries

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"


def measure(engine, prompts: list, gen) -> dict:
    """One backend's generate() wall time, token counts and answers."""
    started = time.perf_counter()
    answers = engine.generate(prompts, gen)
    wall = time.perf_counter() - started
    generated = sum(a.tokens for a in answers)
    prompt_tokens = engine.count_tokens([engine.render(p) for p in prompts])
    return {
        "texts": [a.text for a in answers],
        "wall_s": wall,
        "generated": generated,
        "prompt_tokens": prompt_tokens,
        "tokens_per_s": generated / wall,
        "prompt_tokens_per_s": prompt_tokens / wall,
    }


def run_transformers(path: str, model, prompts: list, gen) -> tuple[dict, object]:
    """The transformers backend as `tuneloop eval` builds it; also returns the tokenizer, which vLLM reuses."""
    import torch

    from tuneloop.eval.backends import TransformersBackend
    from tuneloop.models.references import load_for_eval

    started = time.perf_counter()
    lm, tok = load_for_eval(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = TransformersBackend(path, tok, lm.to(device))
    engine.generate(prompts[:1], gen.model_copy(update={"max_new_tokens": 2}))
    startup = time.perf_counter() - started
    result = measure(engine, prompts, gen)
    result |= {"startup_s": startup, "where": f"{device}, {str(lm.dtype).removeprefix('torch.')}"}
    del engine, lm
    if device == "cuda":
        torch.cuda.empty_cache()  # leave the GPU to vLLM
    return result, tok


def run_vllm(path: str, tok, prompts: list, gen) -> dict:
    """vLLM's offline engine as `tuneloop eval --backend vllm` builds it, shut down after measuring."""
    import torch

    from tuneloop.eval.backends import VllmBackend

    started = time.perf_counter()
    engine = VllmBackend(path, tok)
    engine.generate(prompts[:1], gen.model_copy(update={"max_new_tokens": 2}))
    startup = time.perf_counter() - started
    try:
        result = measure(engine, prompts, gen)
        dtype = str(engine.llm.llm_engine.model_config.dtype).removeprefix("torch.")
    finally:
        engine.llm.llm_engine.engine_core.shutdown()
    return result | {"startup_s": startup, "where": f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {dtype}"}


def section(a: argparse.Namespace, rows: list[tuple[str, dict]], same: int, n: int) -> str:
    """The dated docs/benchmarks.md entry: machine, command, setup, numbers, how to read them."""
    (_, tf), (_, vl) = rows
    speedup = vl["tokens_per_s"] / tf["tokens_per_s"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    argv = " ".join(sys.argv[1:])
    date = time.strftime("%Y-%m-%d")
    lines = [
        f"\n### Evaluation generation throughput — {date} (commit {commit.strip() or 'unknown'})\n",
        f"Machine: {machine()}.  ",
        f"Command: `python scripts/bench_eval.py{' ' + argv if argv else ''}`  ",
        f"Setup: built-in SmolLM2-135M-Instruct, the first {n} synopsis test prompts, chat template "
        f"rendered locally, greedy, at most {a.max_new_tokens} new tokens; transformers in batches of "
        f"{a.batch_size} (left padding, prompts sorted by length), vLLM's offline engine scheduling all prompts "
        "itself (`enforce_eager`). Timed: `generate()` only; start-up = model load or engine start plus a "
        "one-prompt warm-up.\n",
        "| backend | device, dtype | start-up s | generate s | prompt tokens | generated tokens | generated tokens/s "
        "| prompt tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['where']} | {r['startup_s']:.1f} | {r['wall_s']:.1f} | {r['prompt_tokens']} | "
            f"{r['generated']} | **{r['tokens_per_s']:.1f}** | {r['prompt_tokens_per_s']:.0f} |"
        )
    lines += [
        "",
        f"- vLLM / transformers generated tokens/s: **{speedup:.2f}×**",
        f"- greedy agreement: **{same / n:.3f}** ({same} of {n} answers identical)",
        "",
        "How to read: tokens/s is generated tokens (end-of-answer token included) over `generate()` seconds, "
        "the rate `tuneloop eval` generates at once the model is up; prompt tokens/s divides the prompt "
        "tokens by the same seconds (prefill is inside that time, not separate). Start-up is paid once per "
        "model and matters for small suites. Agreement below 1 usually means near-tied tokens resolved differently by "
        "the two engines' numerics, not a different prompt (bf16 on a GPU agrees less than float32). On a "
        "shared CPU, other processes slow the transformers side most (its OpenMP threads spin when a core is "
        "taken), so compare runs from a quiet machine.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200, help="synopsis test prompts")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="transformers batch (vLLM schedules its own)")
    parser.add_argument("--output", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to --output")
    a = parser.parse_args()
    os.environ.setdefault("TUNELOOP_HOME", str(REPO / ".tuneloop"))

    from rich.console import Console
    from rich.table import Table

    from tuneloop.config.evaluation import Generation
    from tuneloop.eval.tasks import load_task
    from tuneloop.models.references import merged_dir, resolve_model
    from tuneloop.recipes import load_suite

    console = Console()
    task = load_suite(REPO / "configs/eval/synopsis.yaml").tasks[0]
    prompts = load_task(task.model_copy(update={"max_rows": a.rows}), None, REPO).prompts
    gen = Generation(max_new_tokens=a.max_new_tokens, batch_size=a.batch_size)
    model = resolve_model(MODEL, REPO, say=console.print)
    console.print(f"{len(prompts)} prompts, max {a.max_new_tokens} new tokens, greedy; {machine()}")

    console.print("transformers: loading and generating", style="bold")
    tf, tok = run_transformers(model.path, model, prompts, gen)
    console.print("vLLM offline engine: starting and generating", style="bold")
    vl = run_vllm(merged_dir(model), tok, prompts, gen)

    same = sum(x == y for x, y in zip(tf["texts"], vl["texts"], strict=True))
    rows = [
        (f"transformers, batch {a.batch_size}", tf),
        ("vLLM offline engine", vl),
    ]
    table = Table(title=f"generation throughput, {len(prompts)} synopsis prompts")
    for col in ("backend", "device, dtype", "start-up s", "generate s", "gen. tokens", "tokens/s", "prompt tok/s"):
        table.add_column(col, justify="left" if col in ("backend", "device, dtype") else "right")
    for label, r in rows:
        table.add_row(
            label,
            r["where"],
            f"{r['startup_s']:.1f}",
            f"{r['wall_s']:.1f}",
            str(r["generated"]),
            f"{r['tokens_per_s']:.1f}",
            f"{r['prompt_tokens_per_s']:.0f}",
        )
    console.print(table)
    speedup = vl["tokens_per_s"] / tf["tokens_per_s"]
    console.print(f"vLLM / transformers generated tokens/s: {speedup:.2f}×")
    console.print(f"greedy agreement: {same / len(prompts):.3f} ({same} of {len(prompts)} rows identical)")
    if a.no_write:
        return

    text = section(a, rows, same, len(prompts))
    if not a.output.exists():
        a.output.write_text("# Benchmarks\n\nAppended by `scripts/bench_*.py`; newest last.\n")
    with a.output.open("a") as f:
        f.write(text)
    console.print(f"appended to {a.output}")


if __name__ == "__main__":
    main()
