"""The launch guards: what the launcher asked for is read from the environment it hands to every rank, refused
before anything loads when it would silently train something else, and checked against what runs."""

from __future__ import annotations

import pytest
import torch

from tuneloop.errors import TuneloopError
from tuneloop.train.launch import Request, check_world, requested, verify

REPO_PROFILES = "configs/accelerate"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_USE_CPU": "True"}, "accelerate then skips DeepSpeed"),
        ({"ACCELERATE_USE_FSDP": "true"}, "FSDP, which accelerate enables only on GPUs"),
        ({"SLURM_STEP_NUM_TASKS": "2"}, "2 copies of this command were started without a launcher"),
    ],
)
def test_launches_that_would_fall_back_are_refused_before_loading(env, expected, monkeypatch):
    """The environment each launch hands to its processes (accelerate's ACCELERATE_*, srun's task count)."""
    from typer.testing import CliRunner

    from tuneloop.cli import app

    if env.get("ACCELERATE_USE_FSDP") and torch.cuda.is_available():
        return  # FSDP is allowed where there is a GPU
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["train", "recipes/sft-full.yaml"])
    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output


def test_the_request_reads_zero_stage_and_offload_from_the_profiles_deepspeed_json(monkeypatch):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[2])
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "2"}
    z2 = requested({**env, "ACCELERATE_DEEPSPEED_CONFIG_FILE": "configs/deepspeed/zero2.json"})
    assert (z2.deepspeed, z2.zero_stage, z2.offload_optimizer, z2.world_size) == (True, 2, None, 2)
    off = requested({**env, "ACCELERATE_DEEPSPEED_CONFIG_FILE": "configs/deepspeed/zero3-offload.json"})
    assert (off.zero_stage, off.offload_optimizer, off.offload_param) == (3, "cpu", "cpu")
    flags = requested({**env, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"})
    assert flags.zero_stage == 3 and flags.deepspeed_config is None
    with pytest.raises(TuneloopError, match="does not exist"):
        requested({**env, "ACCELERATE_DEEPSPEED_CONFIG_FILE": "nowhere/zero9.json"})


def test_what_runs_must_be_what_was_asked():
    mode = {
        "distributed_type": "MULTI_CPU",
        "engine": "DistributedDataParallel",
        "world_size": 2,
        "zero_stage": None,
        "fsdp": False,
    }
    with pytest.raises(TuneloopError, match="asked for DeepSpeed but the trainer runs MULTI_CPU"):
        verify(Request(world_size=2, deepspeed=True, zero_stage=3), mode)
    zero2 = {**mode, "distributed_type": "DEEPSPEED", "engine": "DeepSpeedEngine", "zero_stage": 2}
    with pytest.raises(TuneloopError, match="asked for ZeRO stage 3"):
        verify(Request(world_size=2, deepspeed=True, zero_stage=3), zero2)
    verify(Request(world_size=2, deepspeed=True, zero_stage=2), zero2)
    with pytest.raises(TuneloopError, match="started 2 processes"):
        check_world(Request(world_size=2), 1)
    check_world(Request(world_size=1), 1)
