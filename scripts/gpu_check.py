"""GPU acceptance in one command (`make gpu-check`): what CPU CI cannot show — kernels, speed, MFU — on one CUDA GPU.

    python scripts/gpu_check.py              # ~8 minutes on one H100/H200; appends to docs/benchmarks.md
    python scripts/gpu_check.py --dry-run    # the plan, checked without a GPU (CI runs this)
    python scripts/gpu_check.py --only mfu   # one step

Steps, each in a fresh process, each appending its result to docs/benchmarks.md:
  qlora    QLoRA SFT of the built-in model (4-bit NF4 layers on the GPU, adapter saved)
  zero3    ZeRO-3 full SFT through configs/accelerate/zero3.yaml (one process: the engine and stage are checked)
  mfu      full SFT of a randomly initialised ~1B Llama with packing, bf16: model FLOPs utilisation (target >= 40%)
  eval     scripts/bench_eval.py (transformers vs vLLM generation)
  serve    scripts/bench_serve.py (raw vLLM vs tuneloop's gateway)
  distill  scripts/bench_distill.py (teacher vs half-depth student)
On a machine without CUDA it refuses in one line (exit 2); `--dry-run` builds every step's command and recipe there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_train import machine  # noqa: E402  (same machine line as the other benchmark entries)

TUNELOOP = [sys.executable, "-m", "tuneloop"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--config_file"]
TRAIN = ["-m", "tuneloop.train"]
BENCHMARKS = REPO / "docs/benchmarks.md"
MFU_TARGET = 0.40
# a TinyLlama-shaped model: 22 layers of 2048, grouped-query attention; 1.1B parameters
ONE_B = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
}

QLORA_SET = ["stages.sft.args.max_steps=40", "data.max_train_rows=640", 'stages.sft.args.save_strategy="no"']
ZERO3_SET = ["stages.sft.args.max_steps=20", 'stages.sft.args.eval_strategy="no"', 'stages.sft.args.save_strategy="no"']
MFU_RECIPE = """
name: gpu-check-mfu
base_model: {{name: {model}, dtype: bfloat16, attn_implementation: sdpa}}
data: {{source: debian-descriptions, task: synopsis, eval_split: null}}
stages:
  - name: sft
    method: sft
    args: {{max_steps: 30, learning_rate: 1.0e-4, per_device_train_batch_size: 8, max_length: 2048, packing: true,
           bf16: true, gradient_checkpointing: false, logging_steps: 5, save_strategy: "no"}}
cost: {{device: auto}}
tracking: {{mlflow: false}}
"""


def steps(work: Path) -> dict[str, tuple[list[str], int]]:
    """Each step's command and its time limit in seconds (the limits add up to the 8 minutes the check may take)."""
    sets = lambda overrides: [a for o in overrides for a in ("--set", o)]  # noqa: E731
    return {
        "qlora": ([*TUNELOOP, "train", "recipes/sft-qlora.yaml", *sets(QLORA_SET)], 60),
        "zero3": (
            [*ACCELERATE, "configs/accelerate/zero3.yaml", *TRAIN, "recipes/sft-full.yaml", *sets(ZERO3_SET)],
            60,
        ),
        "mfu": ([*TUNELOOP, "train", str(work / "mfu.yaml")], 120),
        "eval": ([sys.executable, "scripts/bench_eval.py", "--rows", "200"], 60),
        "serve": (
            [sys.executable, "scripts/bench_serve.py", "--config", "configs/serve/gpu.yaml", "--rounds", "1"],
            80,
        ),
        "distill": ([sys.executable, "scripts/bench_distill.py", "--repeats", "1"], 100),
    }


def one_b_model(out: Path, dry: bool) -> int:
    """A randomly initialised ~1B Llama with the built-in model's tokenizer (no download); returns its size."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tuneloop.models import builtin

    tokenizer_dir = builtin.path("smollm2-135m-instruct")
    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir)) if (tokenizer_dir / "tokenizer.json").exists() else 49152
    config = LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **ONE_B)
    with torch.device("meta"):
        size = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    if dry:  # what the recipe validation reads; the weights (2.3 GB) are only written for a real run
        config.save_pretrained(out)
    else:
        torch.manual_seed(0)
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return size


def newest_summary(name: str) -> dict:
    from tuneloop import workspace

    runs = sorted((workspace.runs_dir() / name).glob("*/summary.json"))
    return json.loads(runs[-1].read_text()) if runs else {}


def record(name: str, wall: float, rc: int, tail: str) -> dict:
    """What a step showed: the training steps' own summaries; the benchmark scripts append their own sections."""
    row = {"step": name, "rc": rc, "wall_s": round(wall, 1)}
    recipe = {"qlora": "sft-qlora", "zero3": "sft-full", "mfu": "gpu-check-mfu"}.get(name)
    if rc == 0 and recipe:
        (stage,) = newest_summary(recipe)["stages"][-1:]
        mode = stage.get("distributed") or {}
        cost = stage.get("cost") or {}
        row |= {
            "tokens_per_s": stage.get("tokens_per_s"),
            "mfu": cost.get("mfu"),
            "zero_stage": mode.get("zero_stage"),
            "quantized_layers": mode.get("quantized_layers"),
            "model_memory_mib": (stage.get("model_memory_bytes") or 0) / 2**20,
        }
    elif rc != 0:
        row["error"] = tail.strip().splitlines()[-1][:200] if tail.strip() else "no output"
    return row


def section(rows: list[dict], gpu: str) -> str:
    lines = [
        f"\n## GPU acceptance (`make gpu-check`), {time.strftime('%Y-%m-%d')}\n",
        f"Machine: {machine()}; GPU: {gpu}.\n",
        "| step | result | wall s | tokens/s | MFU | ZeRO stage | 4-bit layers | model MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        if r["step"] == "mfu" and r.get("mfu") is not None:
            mfu += " ✓" if r["mfu"] >= MFU_TARGET else f" (target {MFU_TARGET:.0%})"
        result = "ok" if r["rc"] == 0 else f"failed ({r.get('error', r['rc'])})"
        cells = [r["step"], result, r["wall_s"], _num(r.get("tokens_per_s")), mfu, r.get("zero_stage") or "-"]
        cells += [r.get("quantized_layers") or "-", _num(r.get("model_memory_mib"))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("\nThe eval, serve and distill rows' figures are in their own sections, appended by those scripts.\n")
    return "\n".join(lines)


def _num(value) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) and value else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="build and check every step without running it")
    parser.add_argument("--only", action="append", help="run only these steps (repeatable)")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    a = parser.parse_args()
    import torch

    if not a.dry_run and not torch.cuda.is_available():
        print(
            f"gpu-check needs a CUDA GPU; this machine has none (torch {torch.__version__}). "
            "`python scripts/gpu_check.py --dry-run` checks the plan without one."
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    plan = steps(work)
    unknown = set(a.only or []) - set(plan)
    if unknown:
        parser.error(f"unknown step(s) {sorted(unknown)}; steps: {', '.join(plan)}")
    chosen = [s for s in plan if not a.only or s in a.only]
    size = one_b_model(work / "one-b", dry=a.dry_run or "mfu" not in chosen)
    (work / "mfu.yaml").write_text(MFU_RECIPE.format(model=work / "one-b"))
    print(f"gpu-check: {len(chosen)} steps, {sum(plan[s][1] for s in chosen)} s of limits; 1B model {size / 1e9:.2f}B")
    if a.dry_run:
        try:
            return dry_run(plan, chosen, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name in chosen:
        cmd, limit = plan[name]
        print(f"==> {name}: {' '.join(cmd)}", flush=True)
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=limit)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
        except subprocess.TimeoutExpired as e:
            rc, tail = 124, f"over its {limit} s limit: {str(e.stdout or '')[-500:]}"
        rows.append(record(name, time.perf_counter() - started, rc, tail))
        print(json.dumps(rows[-1]), flush=True)
    text = section(rows, torch.cuda.get_device_name(0))
    print(text)
    with a.output.open("a") as f:
        f.write(text)
    return 0 if all(r["rc"] == 0 for r in rows) else 1


def dry_run(plan: dict, chosen: list[str], work: Path) -> int:
    """What CI checks: every recipe (with its overrides) validates, every benchmark script parses its arguments."""
    from tuneloop.recipes import load_recipe

    checks = {
        "qlora": lambda: load_recipe(REPO / "recipes/sft-qlora.yaml", QLORA_SET),
        "zero3": lambda: load_recipe(REPO / "recipes/sft-full.yaml", ZERO3_SET),
        "mfu": lambda: load_recipe(work / "mfu.yaml"),
    }
    from tuneloop.errors import TuneloopError

    for name in chosen:
        cmd, limit = plan[name]
        if name in checks:
            try:
                checks[name]()
            except TuneloopError as e:
                print(f"{name}: {e}")
                return 1
        else:  # a benchmark script: its own argument parser must accept the arguments given here
            script = next(c for c in cmd if c.endswith(".py"))
            args = cmd[cmd.index(script) + 1 :]
            helptext = subprocess.run(
                [sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, check=True
            )
            missing = [x for x in args if x.startswith("--") and x not in helptext.stdout]
            if missing:
                print(f"{name}: {script} does not take {missing}")
                return 1
        print(f"ok  {name:8} ({limit} s): {' '.join(cmd)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
