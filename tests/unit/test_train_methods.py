"""Every post-training method trains a few steps on a tiny random Llama through the real TRL trainer, from a
recipe, and the weights move; plus what each method refuses and how."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneloop import pipeline
from tuneloop.config.errors import RecipeError
from tuneloop.recipes import load_recipe

RECIPE = """
name: tiny-{method}
base_model: {model}
data:
  source: debian-synopsis-pairs
  task: {task}
  max_train_rows: 12
  max_eval_rows: 4
stages:
  - name: {method}
    method: {method}
{extra}    args:
      max_steps: 3
      learning_rate: 1.0e-2
      per_device_train_batch_size: 4
      max_length: 1024
      logging_steps: 1
      save_steps: 10
{args}"""

CASES = {
    "reward": ("preference", "", ""),
    "dpo": ("preference", "", "      beta: 0.1\n"),
    "kto": ("kto", "", ""),
    "orpo": ("preference", "    experimental: true\n", ""),
    "cpo": ("preference", "    experimental: true\n", ""),
}


def recipe_for(write, tiny_model: Path, method: str, extra: str = "", args: str = "", task: str | None = None) -> Path:
    task_, extra_, args_ = CASES.get(method, ("preference", "", ""))
    text = RECIPE.format(method=method, model=tiny_model, task=task or task_, extra=extra or extra_, args=args or args_)
    return write(f"{method}.yaml", text)


def changed(before: dict, after: dict) -> list[str]:
    return [k for k in before if k in after and not torch.equal(before[k], after[k])]


@pytest.mark.parametrize("method", list(CASES))
def test_method_trains_and_moves_weights(write, tiny_model, method):
    path = recipe_for(write, tiny_model, method)
    result = pipeline.run(load_recipe(path), path)
    (stage,) = result.stages
    assert stage.method == method and stage.steps == 3
    assert stage.loss_first is not None
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(Path(stage.model_dir) / "model.safetensors")
    moved = changed(before, after)
    assert moved, f"{method}: no weight changed"
    if method == "reward":
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(stage.model_dir)
        assert config.architectures == ["LlamaForSequenceClassification"] and config.num_labels == 1
        assert any(k.startswith("score") for k in after)
        acc = stage.pairwise_accuracy
        assert acc["n"] == 4  # every held-out pair (max_eval_rows) is scored, none twice
        wins = acc["value"] * 2 * acc["n"]  # each pair counts 1 (chosen above rejected), ½ (tie) or 0
        assert wins == pytest.approx(round(wins)) and 0 <= round(wins) <= 2 * acc["n"]
        assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
        # the same held-out pairs were scored before and after training, and the score head's training moved them
        assert stage.eval_loss_before is not None and stage.eval_loss_after != pytest.approx(stage.eval_loss_before)
    else:
        assert (Path(stage.model_dir) / "tuneloop-train.json").exists()
    if method in ("dpo", "kto"):
        assert stage.reference_model == "start model, frozen copy"


def test_dpo_lora_uses_the_adapter_disabled_base_as_reference(write, tiny_model):
    lora = "    peft: {type: lora, r: 4, alpha: 8, target_modules: [q_proj, v_proj]}\n"
    path = recipe_for(
        write, tiny_model, "dpo", extra=lora, args="      loss_type: [sigmoid, sft]\n      loss_weights: [1.0, 0.5]\n"
    )
    result = pipeline.run(load_recipe(path), path)
    (stage,) = result.stages
    assert stage.reference_model == "start model, adapter disabled"
    adapter = load_file(Path(stage.model_dir) / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_online_method_trains_on_builtin_rewards(write, tiny_model, method):
    text = f"""
name: tiny-{method}
base_model: {tiny_model}
data: {{source: debian-descriptions, task: synopsis, max_train_rows: 8, eval_split: null}}
stages:
  - name: {method}
    method: {method}
    rewards:
      - {{builtin: debian_synopsis_rules}}
      - {{builtin: rougeL, weight: 0.5}}
    args:
      max_steps: 2
      learning_rate: 1.0e-2
      per_device_train_batch_size: 4
      num_generations: 2
      max_completion_length: 8
      logging_steps: 1
      save_steps: 10
"""
    path = write(f"{method}.yaml", text)
    result = pipeline.run(load_recipe(path), path)
    (stage,) = result.stages
    assert stage.steps == 2
    assert [r["reward"] for r in stage.rewards] == ["debian_synopsis_rules", "rougeL"]
    # the tied-groups share is the mean and last of what TRL logged at each step (the curves tracked in MLflow)
    from tuneloop.tracking import store

    c = store.client()
    runs = c.search_runs([c.get_experiment_by_name(f"tiny-{method}").experiment_id])
    logged = [m for r in runs for m in c.get_metric_history(r.info.run_id, f"train/{method}/frac_reward_zero_std")]
    values = [m.value for m in sorted(logged, key=lambda m: m.step)]
    assert len(values) == 2  # one log per step
    assert stage.zero_std_share_mean == pytest.approx(sum(values) / 2)
    assert stage.zero_std_share_last == pytest.approx(values[-1])
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(Path(stage.model_dir) / "model.safetensors")
    assert changed(before, after)


def test_sft_then_dpo_chains_through_previous(write, tiny_model):
    text = f"""
name: tiny-chain
base_model: {tiny_model}
data: {{source: debian-descriptions, task: synopsis, max_train_rows: 8, max_eval_rows: 4}}
stages:
  - name: sft
    method: sft
    args: {{max_steps: 2, per_device_train_batch_size: 4, max_length: 256, learning_rate: 1.0e-2}}
  - name: dpo
    method: dpo
    data: {{source: debian-synopsis-pairs, task: preference, max_train_rows: 8, max_eval_rows: 4}}
    args: {{max_steps: 2, per_device_train_batch_size: 4, max_length: 256, learning_rate: 1.0e-2}}
"""
    path = write("chain.yaml", text)
    result = pipeline.run(load_recipe(path), path)
    sft, dpo = result.stages
    after_sft = load_file(Path(sft.model_dir) / "model.safetensors")
    after_dpo = load_file(Path(dpo.model_dir) / "model.safetensors")
    base = load_file(tiny_model / "model.safetensors")
    assert changed(after_sft, after_dpo), "dpo must train further from the sft output"
    assert changed(base, after_sft)


BAD = [
    ("method: ppo", "TRL 1.x removed PPO"),
    ("method: orpo", "add `experimental: true`"),
    ("method: dpo\n    experimental: true", "`experimental` is for cpo, orpo; dpo is stable"),
    ("method: grpo", "grpo needs `rewards:`"),
    ("method: dpo\n    rewards: [{builtin: rougeL}]", "`rewards` apply to grpo/rloo"),
    ("method: sft\n    ref_model: smollm2-135m-instruct", "`ref_model` applies to dpo/kto"),
    ("method: grpo\n    rewards: [{builtin: rouge}]", "did you mean rougeL?"),
    ("method: grpo\n    rewards: [{builtin: rougeL, model: x/y}]", "exactly one of `builtin`, `function` or `model`"),
]


@pytest.mark.parametrize(("stage", "message"), BAD)
def test_bad_stage_is_refused_at_validation(write, stage, message):
    text = f"""
name: bad
base_model: smollm2-135m-instruct
data: {{source: debian-synopsis-pairs, task: preference}}
stages:
  - name: s
    {stage}
"""
    path = write("bad.yaml", text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert message in str(e.value)
    assert re.search(r"bad\.yaml:[5-7] stages\.s", str(e.value)), str(e.value)


DATA_BAD = [
    ("dpo", "{source: debian-descriptions, task: synopsis}", "data.format: dpo trains on `prompt` + `chosen`"),
    ("dpo", "{source: debian-descriptions, task: synopsis}", "{source: debian-synopsis-pairs, task: preference}"),
    ("kto", "{source: debian-synopsis-pairs, task: preference}", "kto trains on `prompt` + `completion` + `label`"),
    ("reward", "{source: debian-synopsis-pairs, task: kto}", "reward trains on `prompt` + `chosen` + `rejected`"),
    ("sft", "{source: debian-synopsis-pairs, task: preference}", "sft trains on chat `messages`"),
    ("dpo", "{source: pairs.jsonl}", "dpo needs prompt+chosen+rejected or chosen+rejected columns"),
    (
        "kto",
        "{source: pairs.jsonl, format: {prompt: '{q}', completion: '{a}', label: thumb}}",
        "no column 'thumb' (did you mean thumbs?)",
    ),
]


@pytest.mark.parametrize(("method", "data", "message"), DATA_BAD)
def test_data_that_does_not_fit_the_method_is_refused(write, method, data, message):
    write("pairs.jsonl", json.dumps({"q": "x", "a": "y", "thumbs": True}) + "\n")
    text = f"""
name: bad
base_model: smollm2-135m-instruct
data: {data}
stages:
  - name: s
    method: {method}
"""
    path = write("bad.yaml", text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert message in str(e.value)


ONLINE_BAD = [
    ("num_generations: 3", "must be a multiple of num_generations=3"),
    ("num_generations: 1", "1 must be >= 2"),
    ("{generation_batch_size: 6, num_generations: 4}", "generation_batch_size=6"),
]


@pytest.mark.parametrize(("args", "message"), ONLINE_BAD)
def test_generation_counts_must_divide_the_batch(write, args, message):
    args = args if args.startswith("{") else "{" + args + "}"
    text = f"""
name: bad
base_model: smollm2-135m-instruct
data: {{source: debian-descriptions, task: synopsis}}
stages:
  - name: g
    method: grpo
    rewards: [{{builtin: debian_synopsis_rules}}]
    args: {args}
"""
    path = write("bad.yaml", text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert message in str(e.value) and "stages.g.args." in str(e.value)


def test_unknown_dpo_arg_is_checked_against_dpo_config(write):
    text = """
name: bad
base_model: smollm2-135m-instruct
data: {source: debian-synopsis-pairs, task: preference}
stages:
  - name: d
    method: dpo
    args: {betta: 0.1}
"""
    with pytest.raises(RecipeError, match=r"stages.d.args.betta: unknown key \(did you mean beta\?\)"):
        load_recipe(write("bad.yaml", text))


def test_vllm_generation_without_a_gpu_is_refused_before_loading(write, tiny_model):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the refusal is for machines without one")
    text = f"""
name: bad
base_model: {tiny_model}
data: {{source: debian-descriptions, task: synopsis}}
stages:
  - name: g
    method: grpo
    rewards: [{{builtin: debian_synopsis_rules}}]
    args: {{use_vllm: true}}
"""
    path = write("bad.yaml", text)
    from tuneloop.errors import TuneloopError

    with pytest.raises(TuneloopError, match="use_vllm: generating with vLLM inside training needs a CUDA GPU"):
        pipeline.run(load_recipe(path), path)


def test_a_stage_can_restart_from_the_base_model(write, tiny_model):
    text = f"""
name: tiny-base
base_model: {tiny_model}
data: {{source: debian-descriptions, task: synopsis, max_train_rows: 8, eval_split: null}}
stages:
  - name: first
    method: sft
    args: {{max_steps: 2, per_device_train_batch_size: 4, max_length: 256, learning_rate: 1.0e-2}}
  - name: again
    method: sft
    base: base_model
    args: {{max_steps: 1, per_device_train_batch_size: 4, max_length: 256, learning_rate: 0.0}}
"""
    path = write("base.yaml", text)
    result = pipeline.run(load_recipe(path), path)
    first, again = result.stages
    base = load_file(tiny_model / "model.safetensors")
    after_first = load_file(Path(first.model_dir) / "model.safetensors")
    after_again = load_file(Path(again.model_dir) / "model.safetensors")
    assert changed(base, after_first)
    assert not changed(base, after_again), "learning rate 0 from the base model must leave the base weights"


def test_from_stage_reuses_earlier_stages_in_a_new_run(write, tiny_model):
    from tuneloop.errors import TuneloopError

    text = f"""
name: tiny-from
base_model: {tiny_model}
data: {{source: debian-descriptions, task: synopsis, max_train_rows: 8, eval_split: null}}
stages:
  - name: sft
    method: sft
    args: {{max_steps: 2, per_device_train_batch_size: 4, max_length: 256, learning_rate: 1.0e-2}}
  - name: dpo
    method: dpo
    data: {{source: debian-synopsis-pairs, task: preference, max_train_rows: 8, eval_split: null}}
    args: {{max_steps: 1, per_device_train_batch_size: 4, max_length: 1024, learning_rate: {{lr}}}}
"""
    path = write("from.yaml", text.replace("{lr}", "1.0e-2"))
    with pytest.raises(TuneloopError, match="no run of tiny-from has sft finished"):
        pipeline.run(load_recipe(path), path, from_stage="dpo")
    first = pipeline.run(load_recipe(path), path)
    path = write("from.yaml", text.replace("{lr}", "1.0e-3"))  # only the restarted stage changes
    second = pipeline.run(load_recipe(path), path, from_stage="dpo")
    assert second.run_dir.path != first.run_dir.path
    sft_then, dpo_then = first.stages
    sft_now, dpo_now = second.stages
    assert sft_now.model_dir == sft_then.model_dir and sft_now.reused_from
    assert dpo_now.model_dir != dpo_then.model_dir and dpo_now.reused_from is None
    assert (first.run_dir.path / "stages" / "dpo" / "stage.json").exists(), "the old run is left as it was"
    changed_sft = text.replace("{lr}", "1.0e-3").replace("max_steps: 2", "max_steps: 3")
    path = write("from.yaml", changed_sft)
    with pytest.raises(TuneloopError, match="stage sft changed since"):
        pipeline.run(load_recipe(path), path, from_stage="dpo")
    with pytest.raises(TuneloopError, match="did you mean dpo"):
        pipeline.run(load_recipe(path), path, from_stage="dpp")


def test_kto_labels_accept_thumbs_and_refuse_anything_else(tmp_path):
    from tuneloop.config.schema import Data
    from tuneloop.data import load_data
    from tuneloop.errors import TuneloopError

    rows = [{"q": "x", "a": "y", "t": t} for t in ("up", "down", "true", "0", "good")]
    fmt = {"prompt": "{q}", "completion": "{a}", "label": "t"}
    (tmp_path / "k.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = load_data(Data(source="k.jsonl", eval_split=None, format=fmt), tmp_path)
    assert data.train["label"] == [True, False, True, False, True]
    rows.append({"q": "x", "a": "y", "t": "maybe"})
    (tmp_path / "k.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(TuneloopError, match=r"k.jsonl split 'train': row 6: label 'maybe' says neither desirable"):
        load_data(Data(source="k.jsonl", eval_split=None, format=fmt), tmp_path)
