"""Two-process CPU training (the same code path as a multi-GPU cluster run) and crash recovery with kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import build_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]

RECIPE = """
name: dist
base_model: {model}
data:
  source: debian-descriptions
  task: synopsis
  max_train_rows: {rows}
  max_eval_rows: 8
stages:
  - name: sft
    method: sft
    peft: {{type: lora, r: 4, alpha: 8}}
    args:
      max_steps: {steps}
      learning_rate: 1.0e-2
      per_device_train_batch_size: 2
      max_length: 512
      logging_steps: 1
      save_steps: {save}
"""


def _env(workspace: Path) -> dict[str, str]:
    env = dict(os.environ, TUNELOOP_HOME=str(workspace), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _summary(workspace: Path, name: str) -> dict:
    (run,) = (workspace / "runs" / name).iterdir()
    return json.loads((run / "summary.json").read_text())


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate-cpu", "accelerate-multi-gpu-flag"])
def test_two_cpu_processes_end_with_identical_weights(write, tiny_model, workspace, launcher):
    path = write("r.yaml", RECIPE.format(model=tiny_model, rows=16, steps=3, save=10))
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
        env = _env(workspace)
    else:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--main_process_port",
            str(29518 + len(launcher)),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
        env = _env(workspace)
        if launcher == "accelerate-cpu":
            env["ACCELERATE_USE_CPU"] = "1"
        # without ACCELERATE_USE_CPU, plain accelerate scripts train each rank alone on CPU (DESIGN.md);
        # tuneloop asks accelerate for CPU state itself when no GPU exists, so both launches must synchronise
    proc = subprocess.run(
        [*cmd, "-m", "tuneloop.train", str(path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (stage,) = _summary(workspace, "dist")["stages"]
    assert stage["world_size"] == 2
    assert len(stage["rank_weight_checksums"]) == 2
    assert stage["ranks_in_sync"] is True
    assert stage["steps"] == 3


DPO_RECIPE = """
name: dist-dpo
base_model: {model}
data:
  source: debian-synopsis-pairs
  task: preference
  max_train_rows: 16
  max_eval_rows: 4
stages:
  - name: dpo
    method: dpo
    args:
      max_steps: 3
      learning_rate: 1.0e-2
      beta: 0.1
      per_device_train_batch_size: 2
      max_length: 1024
      logging_steps: 1
      save_steps: 10
"""


def test_two_cpu_processes_of_dpo_end_with_identical_weights(write, tiny_model, workspace):
    """Full-weight DPO: each rank holds the policy (DDP) and its own frozen reference copy; after 3 steps both
    ranks' policies must be bit-identical."""
    path = write("dpo.yaml", DPO_RECIPE.format(model=tiny_model))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        "29541",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    env = dict(_env(workspace), ACCELERATE_USE_CPU="1")
    proc = subprocess.run(
        [*cmd, "-m", "tuneloop.train", str(path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (stage,) = _summary(workspace, "dist-dpo")["stages"]
    assert stage["method"] == "dpo" and stage["world_size"] == 2 and stage["steps"] == 3
    assert len(stage["rank_weight_checksums"]) == 2 and stage["ranks_in_sync"] is True
    assert stage["reference_model"] == "start model, frozen copy"


def test_kill_9_mid_run_then_resume_finishes(write, tmp_path, workspace):
    model = build_tiny_model(tmp_path / "slower", layers=4, hidden=128)
    # killed at its first checkpoint (step 3 of 40): the other 37 steps outlast the 0.05 s poll many times over
    path = write("r.yaml", RECIPE.format(model=model, rows=64, steps=40, save=3).replace("name: dist", "name: crash"))
    cmd = [sys.executable, "-m", "tuneloop", "train", str(path)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(workspace), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    stage_dir = None
    while time.time() < deadline and proc.poll() is None:
        found = list((workspace / "runs" / "crash").glob("*/stages/sft/checkpoint-*/trainer_state.json"))
        if found:
            stage_dir = found[0].parents[1]
            break
        time.sleep(0.05)
    assert stage_dir is not None and proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = stage_dir.parents[1]
    assert not (run_dir / "summary.json").exists()
    done = subprocess.run(
        [*cmd, "--resume"], cwd=REPO, env=_env(workspace), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Checkpoint detected, resuming training at" in done.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    (stage,) = summary["stages"]
    assert stage["steps"] == 40
    assert stage["resumed_from"] and "checkpoint-" in stage["resumed_from"]
    assert (Path(stage["model_dir"]) / "adapter_model.safetensors").exists()
