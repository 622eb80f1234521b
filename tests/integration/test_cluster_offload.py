"""ZeRO-3 with optimizer and parameters offloaded to CPU (DeepSpeedCPUAdam, built on first use into the environment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cluster import SFT, assert_zero, launch, ok, reloaded_checksum, summary

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_zero3_offload_runs_with_optimizer_and_parameters_on_cpu(write, tiny_model, workspace):
    path = write("off.yaml", SFT.format(name="z3off", model=tiny_model, rows=16, peft="", steps=3, save=10))
    ok(launch("zero3-offload", 29630, path, workspace, from_clone=True))  # as docs/cluster.md shows it
    (stage,) = summary(workspace, "z3off")["stages"]
    assert_zero(stage, 3, offload="cpu")
    assert reloaded_checksum(Path(stage["model_dir"])) == stage["rank_weight_checksums"][0]
