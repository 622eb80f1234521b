"""SFT on a tiny random Llama: real TRL training for a few steps; weights must move, outputs must exist."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneloop import pipeline
from tuneloop.recipes import load_recipe

RECIPE = """
name: tiny
base_model: {model}
data:
  source: debian-descriptions
  task: synopsis
  max_train_rows: 24
  max_eval_rows: 8
stages:
  - name: sft
    method: sft
{peft}    args:
      max_steps: 3
      learning_rate: 1.0e-2
      per_device_train_batch_size: 4
      max_length: 512
      logging_steps: 1
      save_steps: 2
"""
LORA = "    peft: {type: lora, r: 4, alpha: 8, target_modules: [q_proj, v_proj]}\n"


def make_recipe(write, tiny_model: Path, peft: str = LORA, extra: str = "", name: str = "r.yaml") -> Path:
    return write(name, RECIPE.format(model=tiny_model, peft=peft) + extra)


def test_lora_sft_trains_adapter_and_leaves_base_untouched(write, tiny_model, workspace):
    path = make_recipe(write, tiny_model)
    base_file = tiny_model / "model.safetensors"
    base_sha = hashlib.sha256(base_file.read_bytes()).hexdigest()
    base_before = load_file(base_file)
    result = pipeline.run(load_recipe(path), path)
    (stage,) = result.stages
    model_dir = Path(stage.model_dir)
    adapter = load_file(model_dir / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero; training must move it"
    assert (model_dir / "tokenizer.json").exists()
    assert not any(k.endswith("q_proj.weight") for k in adapter)  # the adapter holds the update, not base weights
    assert hashlib.sha256(base_file.read_bytes()).hexdigest() == base_sha  # the base checkpoint, bit for bit
    base_after = load_file(base_file)
    assert base_after.keys() == base_before.keys()
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)
    assert not list(model_dir.glob("model*.safetensors"))  # no second copy of base weights in the run either
    assert stage.steps == 3 and stage.train_tokens > 0 and stage.tokens_per_s > 0
    assert stage.eval_loss_before is not None and stage.eval_loss_after is not None
    assert set(stage.data_fingerprints) == {"train", "validation"}
    assert result.run_dir.path.parent == workspace / "runs" / "tiny"
    assert (result.run_dir.path / "recipe.yaml").read_text().startswith("name: tiny")
    summary = json.loads((result.run_dir.path / "summary.json").read_text())
    assert summary["stages"][0]["loss_first"] == stage.loss_first


def test_full_sft_changes_every_trained_weight(write, tiny_model):
    path = make_recipe(write, tiny_model, peft="")
    result = pipeline.run(load_recipe(path), path)
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(Path(result.model_dir) / "model.safetensors")
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"weights that did not move: {unchanged}"
    assert result.stages[0].parameters["trainable"] == result.stages[0].parameters["total"]


@pytest.mark.parametrize("smoke", [False, True])
def test_two_stages_chain_through_a_merged_adapter(write, tiny_model, smoke):
    second = """  - name: polish
    method: sft
    args: {max_steps: 2, per_device_train_batch_size: 4, max_length: 512, learning_rate: 1.0e-3}
"""
    path = make_recipe(write, tiny_model, extra=second)
    result = pipeline.run(load_recipe(path), path, smoke=smoke)
    first_dir = result.run_dir.path / "stages" / "sft"
    assert (first_dir / "merged" / "model.safetensors").exists()
    merged = load_file(first_dir / "merged" / "model.safetensors")
    final = load_file(Path(result.model_dir) / "model.safetensors")
    assert [s.stage for s in result.stages] == ["sft", "polish"]
    assert any(not torch.equal(merged[k], final[k]) for k in merged)


def test_packing_and_overrides_reach_the_trainer(write, tiny_model):
    path = make_recipe(write, tiny_model)
    recipe = load_recipe(path, ["stages.sft.args.packing=true", "stages.sft.args.max_steps=2"])
    result = pipeline.run(recipe, path)
    assert result.stages[0].steps == 2


def test_smoke_run_uses_a_tiny_model_of_the_same_architecture(write, tiny_model):
    path = make_recipe(write, tiny_model, peft="    peft: {type: qlora}\n")
    result = pipeline.run(load_recipe(path), path, smoke=True)
    (stage,) = result.stages
    assert stage.steps == 2 and result.run_dir.path.name.endswith("-smoke")
    assert stage.distributed["quantized_layers"] > 0, "a smoke run quantizes its tiny copy as a real run would"
    config = json.loads((Path(stage.model_dir) / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"


def test_resume_with_nothing_to_resume_starts_a_new_run(write, tiny_model):
    path = make_recipe(write, tiny_model)
    first = pipeline.run(load_recipe(path), path)
    second = pipeline.run(load_recipe(path), path, resume=True)
    assert second.run_dir.path != first.run_dir.path


def test_resume_continues_from_last_complete_checkpoint(write, tiny_model):
    """A run that stopped after checkpoint-2 (summary missing) resumes there instead of starting over."""
    path = make_recipe(write, tiny_model, extra="")
    recipe = load_recipe(path, ["stages.sft.args.max_steps=2"])
    first = pipeline.run(recipe, path)
    (first.run_dir.path / "summary.json").unlink()
    (first.run_dir.path / "stages" / "sft" / "stage.json").unlink()
    again = pipeline.run(load_recipe(path, ["stages.sft.args.max_steps=4"]), path, resume=True)
    assert again.run_dir.path == first.run_dir.path
    assert again.stages[0].resumed_from.endswith("checkpoint-2")
    assert again.stages[0].steps == 4
    # the recipe changed between the two starts: both versions are kept
    assert "max_steps: 2" in (first.run_dir.path / "recipe.previous.yaml").read_text()
    assert "max_steps: 4" in (first.run_dir.path / "recipe.yaml").read_text()


@pytest.mark.parametrize("verb", ["train", "run"])
def test_cli_train_and_run_print_a_summary(write, tiny_model, verb):
    from typer.testing import CliRunner

    from tuneloop.cli import app

    path = make_recipe(write, tiny_model)
    result = CliRunner().invoke(app, [verb, str(path), "--set", "stages.sft.args.max_steps=2"])
    assert result.exit_code == 0, result.output
    for word in ("steps", "train loss", "eval loss", "tokens/s", "train time", "run finished"):
        assert word in result.output


def test_same_recipe_and_seed_give_the_same_losses(write, tiny_model):
    path = make_recipe(write, tiny_model)
    a = pipeline.run(load_recipe(path), path).stages[0]
    b = pipeline.run(load_recipe(path), path).stages[0]
    c = pipeline.run(load_recipe(path, ["seed=7"]), path).stages[0]
    assert (a.loss_first, a.loss_last) == (b.loss_first, b.loss_last)
    assert a.loss_last != c.loss_last


def test_chat_template_override_is_used_and_saved(write, tiny_model, tmp_path):
    template = tmp_path / "tpl.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    path = (
        make_recipe(write, tiny_model)
        .read_text()
        .replace(f"base_model: {tiny_model}", f"base_model: {{name: {tiny_model}, chat_template: tpl.jinja}}")
    )
    recipe_path = write("t.yaml", path)
    result = pipeline.run(load_recipe(recipe_path), recipe_path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(result.model_dir)
    assert tok.chat_template == template.read_text()
