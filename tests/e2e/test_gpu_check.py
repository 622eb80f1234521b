"""`make gpu-check` cannot run without a GPU, so CI runs its dry run: every step's recipe validates with its overrides,
every benchmark script accepts the arguments the check passes; and without CUDA the real run refuses in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = [sys.executable, "scripts/gpu_check.py"]


def test_gpu_check_dry_run_builds_and_validates_every_step():
    proc = subprocess.run([*SCRIPT, "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in ("qlora", "zero3", "mfu", "eval", "serve", "distill"):
        assert f"ok  {step}" in proc.stdout
    assert "configs/accelerate/zero3.yaml" in proc.stdout
    limits = proc.stdout.splitlines()[0]
    assert "480 s of limits" in limits and "1B model 1.1" in limits  # within 8 minutes; a ~1B Llama


def test_gpu_check_without_cuda_refuses_in_one_line():
    if torch.cuda.is_available():
        return  # a GPU machine runs the check itself (`make gpu-check`)
    proc = subprocess.run(SCRIPT, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout.strip().count("\n") == 0 and "needs a CUDA GPU" in proc.stdout
    assert not proc.stderr.strip() or "Traceback" not in proc.stderr
