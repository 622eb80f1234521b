"""The cluster path on CPU: DeepSpeed ZeRO-2/3 (and offload) through the shipped launcher profiles, two ranks over gloo.

Each test launches the real entry point as docs/cluster.md tells users to, with the shipped profile; only the process
count and the rendezvous port are overridden on the command line. The libraries fall back silently (DESIGN.md,
"Facts"), so every test asserts the mode that ran — engine, ZeRO stage, offload, world size — as each stage summary
records it, and reloads what was saved in this (fresh) process, as a user would, never inside a rank.
"""

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
from tuneloop.train.stage import weights_checksum

pytestmark = [pytest.mark.slow, pytest.mark.integration]
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


def _env(workspace: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, TUNELOOP_HOME=str(workspace), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "ACCELERATE_USE_CPU"):
        env.pop(var, None)
    return {**env, **extra}


def _launch_cmd(profile: str, port: int, recipe: Path, *args: str) -> list[str]:
    """What docs/cluster.md shows, with the shipped profile; two processes instead of eight."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{profile}.yaml",
        "--num_processes", "2", "--main_process_port", str(port), "-m", "tuneloop.train", str(recipe), *args,
    ]  # fmt: skip


def _launch(profile: str, port: int, recipe: Path, workspace: Path, *args: str, **env: str):
    return subprocess.run(
        _launch_cmd(profile, port, recipe, *args),
        cwd=REPO,
        env=_env(workspace, **env),
        capture_output=True,
        text=True,
        timeout=420,
    )


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def _summary(workspace: Path, name: str) -> dict:
    (run,) = (workspace / "runs" / name).iterdir()
    return json.loads((run / "summary.json").read_text())


def _assert_zero(stage: dict, zero_stage: int, offload: str | None = None) -> None:
    mode = stage["distributed"]
    assert mode["distributed_type"] == "DEEPSPEED" and mode["engine"] == "DeepSpeedEngine", mode
    assert mode["zero_stage"] == zero_stage and mode["world_size"] == stage["world_size"] == 2, mode
    assert mode["offload_optimizer"] == offload and mode["offload_param"] == offload, mode
    assert len(stage["rank_weight_checksums"]) == 2 and stage["ranks_in_sync"] is True


def _reloaded_checksum(model_dir: Path, base: Path | None = None) -> str:
    """The saved weights, loaded in this process (no DeepSpeed here), hashed as the ranks hashed theirs."""
    from transformers import AutoModelForCausalLM

    if base is None:
        return weights_checksum(AutoModelForCausalLM.from_pretrained(model_dir))
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), model_dir, is_trainable=True)
    return weights_checksum(model)


def test_zero2_shipped_recipe_smoke_ranks_agree_and_the_saved_model_reloads_bit_identical(workspace):
    """Exactly the command docs/cluster.md shows: the shipped full-SFT recipe, --smoke (the built-in model's
    architecture scaled down), under the shipped zero2.yaml."""
    proc = _launch("zero2", 29610, REPO / "recipes/sft-full.yaml", workspace, "--smoke")
    _ok(proc)
    assert "2 · DeepSpeed ZeRO-2 (weights identical on all ranks)" in proc.stdout
    (stage,) = _summary(workspace, "sft-full")["stages"]
    _assert_zero(stage, 2)
    assert stage["steps"] == 2
    assert _reloaded_checksum(Path(stage["model_dir"])) == stage["rank_weight_checksums"][0]


def test_zero3_lora_sft_with_generation_then_merged_into_dpo(write, tiny_model, workspace):
    path = write("two.yaml", TWO_STAGES.format(model=tiny_model))
    proc = _launch("zero3", 29620, path, workspace)
    _ok(proc)
    sft, dpo = _summary(workspace, "z3-two")["stages"]
    _assert_zero(sft, 3)
    _assert_zero(dpo, 3)
    # generation metrics ran with sharded weights at both steps, and training went on after them
    assert proc.stdout.count("gen_rougeL") == 2 and sft["steps"] == 2 and sft["eval_loss_after"] is not None
    # the LoRA adapter trained under ZeRO-3 reloads onto its base exactly as the ranks held it (gathered)
    adapter = Path(sft["model_dir"])
    assert (adapter / "adapter_model.safetensors").is_file()
    assert _reloaded_checksum(adapter, base=tiny_model) == sft["rank_weight_checksums"][0]
    # it was merged for the next stage, which started from the merge and trained every weight against a reference
    merged = adapter.parent / "merged"
    assert (merged / "config.json").is_file() and dpo["reference_model"] == "start model, frozen copy"
    assert dpo["steps"] == 2 and dpo["loss_first"] != dpo["loss_last"]
    assert _reloaded_checksum(Path(dpo["model_dir"])) == dpo["rank_weight_checksums"][0]


def test_zero3_offload_runs_with_optimizer_and_parameters_on_cpu(write, tiny_model, workspace):
    path = write("off.yaml", SFT.format(name="z3off", model=tiny_model, rows=16, peft="", steps=3, save=10))
    _ok(_launch("zero3-offload", 29630, path, workspace))
    (stage,) = _summary(workspace, "z3off")["stages"]
    _assert_zero(stage, 3, offload="cpu")
    assert _reloaded_checksum(Path(stage["model_dir"])) == stage["rank_weight_checksums"][0]


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    final = max((run_dir / "stages/sft").glob("checkpoint-*"), key=lambda d: int(d.name.split("-")[-1]))
    history = json.loads((final / "trainer_state.json").read_text())["log_history"]
    return [(e["step"], e["loss"]) for e in history if "loss" in e]


def test_zero3_kill_9_then_resume_continues_the_same_loss_curve(write, tmp_path, workspace):
    """An uninterrupted run and a run SIGKILLed after a ZeRO checkpoint then `--resume`d log the same losses."""
    model = build_tiny_model(tmp_path / "slower", layers=4, hidden=128)
    settings = {"model": model, "rows": 64, "peft": "", "steps": 24, "save": 4}
    whole = write("whole.yaml", SFT.format(name="whole", **settings))
    _ok(_launch("zero3", 29640, whole, workspace))
    path = write("crash.yaml", SFT.format(name="crash", **settings))
    proc = subprocess.Popen(
        _launch_cmd("zero3", 29641, path),
        cwd=REPO,
        env=_env(workspace),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, checkpoint = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None and checkpoint is None:
        done = list((workspace / "runs" / "crash").glob("*/stages/sft/checkpoint-8/trainer_state.json"))
        checkpoint = done[0].parent if done else None
        time.sleep(0.05)
    assert checkpoint is not None and proc.poll() is None, "the run ended before it could be killed"
    # the launcher and both ranks at once, as on a pre-empted node (torchrun starts each rank in a session of its own)
    import psutil

    for process in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        process.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = checkpoint.parents[2]
    assert not (run_dir / "summary.json").exists()
    resumed = _launch("zero3", 29642, path, workspace, "--resume")
    _ok(resumed)
    assert "Checkpoint detected, resuming training at" in " ".join(resumed.stdout.split())  # rich wraps lines
    (stage,) = _summary(workspace, "crash")["stages"]
    _assert_zero(stage, 3)
    assert stage["resumed_from"] and stage["steps"] == 24
    assert (int(stage["resumed_from"].rsplit("-", 1)[1])) >= 8
    (whole_run,) = (workspace / "runs" / "whole").iterdir()
    expected, got = _losses(whole_run), _losses(run_dir)
    assert [s for s, _ in got] == [s for s, _ in expected] == list(range(1, 25))
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected], rel=1e-4)


@pytest.mark.parametrize(
    ("profile", "env", "expected"),
    [
        ("zero2", {"ACCELERATE_USE_CPU": "1"}, "accelerate then skips DeepSpeed and trains plain DDP"),
        ("fsdp", {}, "FSDP, which accelerate enables only on GPUs"),
    ],
)
def test_launches_that_would_silently_fall_back_are_refused(write, tiny_model, workspace, profile, env, expected):
    path = write("g.yaml", SFT.format(name="guard", model=tiny_model, rows=16, peft="", steps=2, save=10))
    proc = _launch(profile, 29650 + len(profile), path, workspace, **env)
    assert proc.returncode != 0
    said = " ".join((proc.stdout + proc.stderr).split())
    assert f"error: the launcher asked for {expected}" in said or expected in said
    assert "tuneloop/train" not in said, "tuneloop's refusal is one line, not a traceback through its code"
    assert not (workspace / "runs" / "guard").exists(), "refused before a run folder or model was touched"
