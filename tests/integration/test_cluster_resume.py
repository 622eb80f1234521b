"""`kill -9` of a ZeRO-3 run (launcher and both ranks), then `--resume`: the same loss curve as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import build_tiny_model
from tests.integration.cluster import SFT, assert_zero, env_for, launch, launch_cmd, ok, summary

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    final = max((run_dir / "stages/sft").glob("checkpoint-*"), key=lambda d: int(d.name.split("-")[-1]))
    history = json.loads((final / "trainer_state.json").read_text())["log_history"]
    return [(e["step"], e["loss"]) for e in history if "loss" in e]


def test_zero3_kill_9_then_resume_continues_the_same_loss_curve(write, tmp_path, workspace):
    """An uninterrupted run and a run SIGKILLed after a ZeRO checkpoint then `--resume`d log the same losses."""
    model = build_tiny_model(tmp_path / "slower", layers=4, hidden=128)
    settings = {"model": model, "rows": 64, "peft": "", "steps": 16, "save": 4}
    whole = write("whole.yaml", SFT.format(name="whole", **settings))
    ok(launch("zero3", 29640, whole, workspace))
    path = write("crash.yaml", SFT.format(name="crash", **settings))
    proc = subprocess.Popen(
        launch_cmd("zero3", 29641, path),
        cwd=workspace.parent,
        env=env_for(workspace),
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
    resumed = launch("zero3", 29642, path, workspace, "--resume")
    ok(resumed)
    assert "Checkpoint detected, resuming training at" in " ".join(resumed.stdout.split())  # rich wraps lines
    (stage,) = summary(workspace, "crash")["stages"]
    assert_zero(stage, 3)
    assert stage["resumed_from"] and stage["steps"] == 16
    assert (int(stage["resumed_from"].rsplit("-", 1)[1])) >= 8
    (whole_run,) = (workspace / "runs" / "whole").iterdir()
    expected, got = _losses(whole_run), _losses(run_dir)
    assert [s for s, _ in got] == [s for s, _ in expected] == list(range(1, 17))
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected], rel=1e-4)
