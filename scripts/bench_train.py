"""Training throughput benchmark: tuneloop vs a hand-written TRL script, and packed vs unpacked SFT.

    python scripts/bench_train.py [--steps 8] [--repeats 2]

Both sides train the built-in SmolLM2-135M-Instruct with the same LoRA settings on the same synopsis rows for
the same number of steps, each in a fresh process, alternating (A B A B) so that machine noise hits both.
Throughput is non-padding tokens seen per second of training (TRL's `num_input_tokens_seen` over
`train_runtime`). Results and the machine description are appended to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH, MAX_LEN, LR, SEED = 8, 256, 5e-4, 42

RECIPE = """
name: bench
defaults: [models/smollm2-135m]
data: {{source: debian-descriptions, task: synopsis, max_train_rows: {rows}, eval_split: null}}
stages:
  - name: sft
    method: sft
    peft: {{type: lora, r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear}}
    args:
      max_steps: {steps}
      learning_rate: {lr}
      per_device_train_batch_size: {batch}
      gradient_accumulation_steps: {accum}
      max_length: {max_len}
      logging_steps: 1
      save_strategy: "no"
      packing: {packing}
"""


def _step_times_class():
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.steps, self.begin = [], (0.0, 0)

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = (time.perf_counter(), state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kwargs):
            t0, n0 = self.begin
            self.steps.append((time.perf_counter() - t0, state.num_input_tokens_seen - n0))

        def steady(self):
            later = self.steps[1:]
            return sum(n for _, n in later) / sum(t for t, _ in later)

    return StepTimes


def baseline_worker(steps: int, out: str) -> None:
    """The hand-written TRL script: what a user would write without tuneloop."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tuneloop.models import builtin

    StepTimes = _step_times_class()
    path = str(builtin.path("smollm2-135m-instruct"))
    ds = load_dataset("json", data_files=str(REPO / "data/debian-descriptions/train.jsonl"), split="train")
    ds = ds.select(range(steps * BATCH))
    system = "You write the one-line synopsis of a Debian package from its long description."
    ds = ds.map(
        lambda r: {
            "prompt": [{"role": "system", "content": system}, {"role": "user", "content": r["description"]}],
            "completion": [{"role": "assistant", "content": r["synopsis"]}],
        },
        remove_columns=ds.column_names,
    )
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=steps,
        learning_rate=LR,
        per_device_train_batch_size=BATCH,
        max_length=MAX_LEN,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        seed=SEED,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        args=args,
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(path),
        peft_config=LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    clock = StepTimes()  # measurement only: the same per-step timing tuneloop reports
    trainer.add_callback(clock)
    result = trainer.train()
    tps = trainer.state.num_input_tokens_seen / result.metrics["train_runtime"]
    Path(out).write_text(json.dumps({"tokens_per_s": tps, "tokens_per_s_after_first_step": clock.steady()}))


def run_tuneloop(steps: int, packing: bool, batch: int, tmp: Path, tag: str) -> tuple[float, float]:
    """`tuneloop train` with an effective batch of BATCH rows: `batch` per forward pass, the rest accumulated."""
    recipe = tmp / f"bench-{tag}.yaml"
    rows = steps * BATCH * (4 if packing else 1)  # packed rows hold several examples; never run out of data
    recipe.write_text(
        RECIPE.format(
            rows=rows,
            steps=steps,
            lr=LR,
            batch=batch,
            accum=BATCH // batch,
            max_len=MAX_LEN,
            packing=str(packing).lower(),
        )
    )
    run_dir = tmp / f"run-{tag}"
    subprocess.run(
        [sys.executable, "-m", "tuneloop", "train", str(recipe), "--run-dir", str(run_dir)],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stage = json.loads((run_dir / "stages/sft/stage.json").read_text())
    return stage["tokens_per_s"], stage["tokens_per_s_after_first_step"]


def run_baseline(steps: int, tmp: Path, tag: str) -> tuple[float, float]:
    out = tmp / f"baseline-{tag}.json"
    subprocess.run(
        [sys.executable, __file__, "--baseline-worker", "--steps", str(steps), "--out", str(out)],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    got = json.loads(out.read_text())
    return got["tokens_per_s"], got["tokens_per_s_after_first_step"]


def machine() -> str:
    import torch

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    versions = f"torch {torch.__version__}, Python {platform.python_version()}"
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {gpu}; {versions}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="tuneloop,trl,packed,unpacked-b1", help="comma-separated subset")
    parser.add_argument("--output", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.baseline_worker:
        baseline_worker(a.steps, a.out)
        return
    subprocess.run(
        [sys.executable, "-m", "tuneloop", "models", "pull", "smollm2-135m-instruct"],
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    every = {
        "tuneloop": (
            f"`tuneloop train`, unpacked, batch {BATCH}",
            lambda i: run_tuneloop(a.steps, False, BATCH, tmp, f"tl{i}"),
        ),
        "trl": (f"hand-written TRL script, unpacked, batch {BATCH}", lambda i: run_baseline(a.steps, tmp, f"{i}")),
        "packed": (
            f"`tuneloop train`, packed (BFD), batch 1 × {BATCH} accumulated",
            lambda i: run_tuneloop(a.steps, True, 1, tmp, f"pk{i}"),
        ),
        "unpacked-b1": (
            f"`tuneloop train`, unpacked, batch 1 × {BATCH} accumulated",
            lambda i: run_tuneloop(a.steps, False, 1, tmp, f"u1{i}"),
        ),
    }
    variants = {k: every[k] for k in a.variants.split(",")}
    whole: dict[str, list[float]] = {k: [] for k in variants}
    steady: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(a.repeats):
        for name, (_, fn) in variants.items():
            started = time.perf_counter()
            w, st = fn(i)
            whole[name].append(w)
            steady[name].append(st)
            took = time.perf_counter() - started
            print(
                f"{name:11s} run {i + 1}: {w:6.1f} tokens/s, {st:6.1f} after the first step ({took:.0f} s)", flush=True
            )
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in steady.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    lines = [
        f"\n### Training throughput — {time.strftime('%Y-%m-%d')} (commit {commit.strip() or 'unknown'})\n",
        f"Machine: {machine()}.  ",
        "Setup: built-in SmolLM2-135M-Instruct, LoRA r=16 on all linear layers, synopsis task, "
        f"max_length {MAX_LEN}, effective batch {BATCH}, {a.steps} optimizer steps, {a.repeats} alternating runs "
        "each in a fresh process. Throughput = non-padding tokens per second of training; the median of the runs "
        "is taken after the first step, which pays one-off costs (whole-run figures shown for reference).\n",
        "| run | tokens/s after the first step (runs) | median | whole-run tokens/s (runs) |",
        "|---|---|---|---|",
    ]
    for k, (label, _) in variants.items():
        lines.append(
            f"| {label} | {', '.join(f'{x:.1f}' for x in steady[k])} | **{med[k]:.1f}** | "
            f"{', '.join(f'{x:.1f}' for x in whole[k])} |"
        )
    lines.append("")
    if {"tuneloop", "trl"} <= set(med):
        lines.append(f"- tuneloop / TRL throughput ratio: **{med['tuneloop'] / med['trl']:.3f}** (target ≥ 0.97)")
    if {"packed", "tuneloop"} <= set(med):
        lines.append(
            f"- packed / unpacked throughput at batch {BATCH}: **{med['packed'] / med['tuneloop']:.2f}×** "
            "(target ≥ 1.5×)"
        )
    if {"packed", "unpacked-b1"} <= set(med):
        lines.append(
            f"- packed / unpacked at batch 1, where unpacked has no padding at all: "
            f"**{med['packed'] / med['unpacked-b1']:.2f}×**"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.output.exists():
        a.output.write_text("# Benchmarks\n\nAppended by `scripts/bench_*.py`; newest last.\n")
    with a.output.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
