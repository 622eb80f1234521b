"""The cluster path on CPU, through the shipped launcher profiles as docs/cluster.md shows them: ZeRO-2 on the
shipped recipe, ZeRO-3 with LoRA, generation during training, a merge and DPO, and the launches that would fall back
silently. Helpers and recipes: tests/integration/cluster.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cluster import REPO, SFT, TWO_STAGES, assert_zero, launch, ok, reloaded_checksum, summary

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_zero2_shipped_recipe_smoke_ranks_agree_and_the_saved_model_reloads_bit_identical(workspace):
    """Exactly the command docs/cluster.md shows: the shipped full-SFT recipe, --smoke (the built-in model's
    architecture scaled down), under the shipped zero2.yaml."""
    proc = launch("zero2", 29610, REPO / "recipes/sft-full.yaml", workspace, "--smoke")
    ok(proc)
    assert "2 · DeepSpeed ZeRO-2 (weights identical on all ranks)" in proc.stdout
    (stage,) = summary(workspace, "sft-full")["stages"]
    assert_zero(stage, 2)
    assert stage["steps"] == 2
    assert reloaded_checksum(Path(stage["model_dir"])) == stage["rank_weight_checksums"][0]


def test_zero3_lora_sft_with_generation_then_merged_into_dpo(write, tiny_model, workspace):
    path = write("two.yaml", TWO_STAGES.format(model=tiny_model))
    proc = launch("zero3", 29620, path, workspace)
    ok(proc)
    sft, dpo = summary(workspace, "z3-two")["stages"]
    assert_zero(sft, 3)
    assert_zero(dpo, 3)
    # generation metrics ran with sharded weights at both steps, and training went on after them
    assert proc.stdout.count("gen_rougeL") == 2 and sft["steps"] == 2 and sft["eval_loss_after"] is not None
    # the LoRA adapter trained under ZeRO-3 reloads onto its base exactly as the ranks held it (gathered)
    adapter = Path(sft["model_dir"])
    assert (adapter / "adapter_model.safetensors").is_file()
    assert reloaded_checksum(adapter, base=tiny_model) == sft["rank_weight_checksums"][0]
    # it was merged for the next stage, which started from the merge and trained every weight against a reference
    merged = adapter.parent / "merged"
    assert (merged / "config.json").is_file() and dpo["reference_model"] == "start model, frozen copy"
    assert dpo["steps"] == 2 and dpo["loss_first"] != dpo["loss_last"]
    assert reloaded_checksum(Path(dpo["model_dir"])) == dpo["rank_weight_checksums"][0]


@pytest.mark.parametrize(
    ("profile", "env", "expected"),
    [
        ("zero2", {"ACCELERATE_USE_CPU": "1"}, "accelerate then skips DeepSpeed and trains plain DDP"),
        ("fsdp", {}, "FSDP, which accelerate enables only on GPUs"),
    ],
)
def test_launches_that_would_silently_fall_back_are_refused(write, tiny_model, workspace, profile, env, expected):
    path = write("g.yaml", SFT.format(name="guard", model=tiny_model, rows=16, peft="", steps=2, save=10))
    proc = launch(profile, 29650 + len(profile), path, workspace, **env)
    assert proc.returncode != 0
    said = " ".join((proc.stdout + proc.stderr).split())
    assert f"error: the launcher asked for {expected}" in said or expected in said
    assert "tuneloop/train" not in said, "tuneloop's refusal is one line, not a traceback through its code"
    assert not (workspace / "runs" / "guard").exists(), "refused before a run folder or model was touched"
