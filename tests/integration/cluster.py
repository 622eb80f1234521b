"""Shared by the cluster tests (test_cluster_*.py): DeepSpeed ZeRO-2/3 (and offload) through the shipped launcher
profiles, two ranks over gloo. The tests are split over files so that pytest-xdist runs them on different workers.

Each test launches the real entry point as docs/cluster.md tells users to, with the shipped profile; only the process
count and the rendezvous port are overridden on the command line. The libraries fall back silently (DESIGN.md,
"Facts"), so every test asserts the mode that ran — engine, ZeRO stage, offload, world size — as each stage summary
records it, and reloads what was saved in this (fresh) process, as a user would, never inside a rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tuneloop import shipped
from tuneloop.train.stage import weights_checksum

REPO = Path(__file__).resolve().parents[2]

SFT = """
name: {name}
base_model: {model}
data: {{source: debian-descriptions, task: synopsis, max_train_rows: {rows}, max_eval_rows: 8}}
stages:
  - name: sft
    method: sft
{peft}    args: {{max_steps: {steps}, learning_rate: 1.0e-2, per_device_train_batch_size: 2, max_length: 512,
           logging_steps: 1, save_steps: {save}}}
"""

# LoRA SFT with generation metrics during training (sharded weights: every rank must join each forward), then the
# adapter merged between stages, then full-weight DPO whose frozen reference model is sharded too
TWO_STAGES = """
name: z3-two
base_model: {model}
data: {{source: debian-descriptions, task: synopsis, max_train_rows: 16, max_eval_rows: 8}}
stages:
  - name: sft
    method: sft
    peft: {{type: lora, r: 4, alpha: 8}}
    args: {{max_steps: 2, learning_rate: 1.0e-2, per_device_train_batch_size: 2, max_length: 512, logging_steps: 1,
           save_steps: 10}}
  - name: dpo
    method: dpo
    data: {{source: debian-synopsis-pairs, task: preference, max_train_rows: 16, max_eval_rows: 4}}
    args: {{max_steps: 2, learning_rate: 1.0e-2, beta: 0.1, per_device_train_batch_size: 2, max_length: 1024,
           logging_steps: 1, save_steps: 10}}
evaluation:
  during_training: {{every_steps: 1, rows: 4}}
  tasks:
    - {{name: synopsis, split: test, max_rows: 4, metrics: [rougeL], generation: {{max_new_tokens: 8}}}}
"""


def env_for(workspace: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, TUNELOOP_HOME=str(workspace), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "ACCELERATE_USE_CPU"):
        env.pop(var, None)
    return {**env, **extra}


def launch_cmd(profile: str, port: int, recipe: Path, *args: str, from_clone: bool = False) -> list[str]:
    """What docs/cluster.md shows, with the shipped profile; two processes instead of eight. From a clone's root the
    profile is `configs/accelerate/NAME.yaml`; from anywhere else, the path `tuneloop configs path` prints (inside
    the package), whose relative `deepspeed_config_file` tuneloop then finds in the package too."""
    shipped_profile = shipped.configs() / "accelerate" / f"{profile}.yaml"
    profile_path = f"configs/accelerate/{profile}.yaml" if from_clone else str(shipped_profile)
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        profile_path,
        "--num_processes",
        "2",
        "--main_process_port",
        str(port),
        "-m",
        "tuneloop.train",
        str(recipe),
        *args,
    ]


def launch(profile: str, port: int, recipe: Path, workspace: Path, *args: str, from_clone: bool = False, **env: str):
    """Launched from the clone's root (`from_clone`), or from a directory outside it, as a user's project is."""
    return subprocess.run(
        launch_cmd(profile, port, recipe, *args, from_clone=from_clone),
        cwd=REPO if from_clone else workspace.parent,
        env=env_for(workspace, **env),
        capture_output=True,
        text=True,
        timeout=420,
    )


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def summary(workspace: Path, name: str) -> dict:
    (run,) = (workspace / "runs" / name).iterdir()
    return json.loads((run / "summary.json").read_text())


def assert_zero(stage: dict, zero_stage: int, offload: str | None = None) -> None:
    mode = stage["distributed"]
    assert mode["distributed_type"] == "DEEPSPEED" and mode["engine"] == "DeepSpeedEngine", mode
    assert mode["zero_stage"] == zero_stage and mode["world_size"] == stage["world_size"] == 2, mode
    assert mode["offload_optimizer"] == offload and mode["offload_param"] == offload, mode
    assert len(stage["rank_weight_checksums"]) == 2 and stage["ranks_in_sync"] is True


def reloaded_checksum(model_dir: Path, base: Path | None = None) -> str:
    """The saved weights, loaded in this process (no DeepSpeed here), hashed as the ranks hashed theirs."""
    from transformers import AutoModelForCausalLM

    if base is None:
        return weights_checksum(AutoModelForCausalLM.from_pretrained(model_dir))
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), model_dir, is_trainable=True)
    return weights_checksum(model)
