"""Distillation: a half-depth student cut from the teacher trains through TRL's DistillationTrainer, on its own
answers (on-policy) or on the data's (off-policy), and what a distill stage refuses before loading anything."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import build_tiny_model
from tuneloop import pipeline
from tuneloop.config.errors import RecipeError
from tuneloop.models.loading import kept_layers
from tuneloop.recipes import load_recipe


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-teacher"), layers=4)


def test_every_n_keeps_first_and_last_layers_evenly_spaced():
    half = kept_layers("every_2", 30)
    assert len(half) == 15 and half[0] == 0 and half[-1] == 29
    assert len(kept_layers("every_3", 30)) == 10
    assert kept_layers("every_2", 4) == [0, 3]
    assert kept_layers([1, 2], 4) == [1, 2]


@pytest.mark.parametrize("mode", ["off_policy", "on_policy"])
def test_half_depth_student_from_the_teacher_trains_and_generates(write, teacher, mode):
    text = f"""
name: tiny-distill
base_model: {teacher}
data: {{source: debian-descriptions, task: synopsis, max_train_rows: 8, max_eval_rows: 4}}
stages:
  - name: distill
    method: distill
    mode: {mode}
    student: {{from: teacher, keep_layers: every_2}}
    args:
      max_steps: 2
      learning_rate: 1.0e-2
      per_device_train_batch_size: 4
      max_completion_length: 8
      logging_steps: 1
      save_steps: 10
"""
    path = write("distill.yaml", text)
    result = pipeline.run(load_recipe(path), path)
    (stage,) = result.stages
    assert stage.steps == 2 and stage.loss_first is not None
    d = stage.distillation
    assert d["mode"] == mode and d["teacher_layers"] == 4 and d["student_layers"] == 2 and d["kept_layers"] == [0, 3]
    assert d["beta"] == (0.0 if mode == "off_policy" else 1.0)  # forward KL on data, TRL's reverse KL on-policy
    model_dir = Path(stage.model_dir)
    assert json.loads((model_dir / "config.json").read_text())["num_hidden_layers"] == 2
    before = load_file(teacher / "model.safetensors")
    after = load_file(model_dir / "model.safetensors")
    assert "model.layers.2.self_attn.q_proj.weight" not in after
    # the student's layer 1 started as the teacher's layer 3, and training moved it
    assert not torch.equal(after["model.layers.1.mlp.up_proj.weight"], before["model.layers.3.mlp.up_proj.weight"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt")
    out = student.generate(**ids, max_new_tokens=4, do_sample=False)  # the KV cache indexes the renumbered layers
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_off_policy_answers_are_the_data_completion_through_end_of_turn(teacher):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.train.distill import DatasetDistillationTrainer, DistillationConfig

    tok = AutoTokenizer.from_pretrained(teacher)
    prompt = [{"role": "user", "content": "Describe: a tool that compresses files"}]
    completion = [{"role": "assistant", "content": "file compressor"}]
    trainer = DatasetDistillationTrainer(
        model=AutoModelForCausalLM.from_pretrained(teacher),
        teacher_model=AutoModelForCausalLM.from_pretrained(teacher),
        args=DistillationConfig(output_dir="/tmp/unused", use_cpu=True, bf16=False, report_to="none"),
        train_dataset=Dataset.from_list([{"prompt": prompt, "completion": completion}]),
        processing_class=tok,
    )
    prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = trainer._answer_ids(prompt_ids["input_ids"], prompt, completion)
    assert tok.decode(ids) == "file compressor<|im_end|>"


BAD = [
    ("", None, "distill needs `student:`"),
    ("student: {from: teacher, keep_layers: [0, 9]}", None, "layers [9] do not exist: the teacher"),
    ("student: {from: teacher, keep_layers: every_1}", None, "use every_N (N >= 2"),
    ("student: {from: other, keep_layers: every_2}", None, "`keep_layers` drops layers of the teacher"),
    ("student: {from: other}", None, "the student's vocabulary (1000 tokens) differs from the teacher's"),
    (
        "student: {from: teacher}\n    mode: off_policy",
        "{source: prompts.jsonl}",
        "off_policy distillation trains on the data",
    ),
    ("student: {from: teacher}\n    mode: sometimes", None, "on_policy"),
]


@pytest.mark.parametrize(("stage", "data", "message"), BAD)
def test_bad_distill_stage_is_refused_at_validation(write, teacher, tmp_path, stage, data, message):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"vocab_size": 1000, "num_hidden_layers": 2}))
    write("prompts.jsonl", json.dumps({"prompt": "x"}) + "\n")
    source = data or "{source: debian-descriptions, task: synopsis}"
    text = f"""
name: bad
base_model: {teacher}
data: {source}
stages:
  - name: d
    method: distill
    {stage.replace("other", str(other))}
"""
    path = write("bad.yaml", text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert message in str(e.value)
    assert re.search(r"bad\.yaml:\d+ stages\.d", str(e.value)), str(e.value)


@pytest.mark.parametrize(("key", "method"), [("teacher: x/y", "sft"), ("student: {from: teacher}", "dpo")])
def test_teacher_and_student_belong_to_distill(write, key, method):
    text = f"""
name: bad
base_model: smollm2-135m-instruct
data: {{source: debian-synopsis-pairs, task: preference}}
stages:
  - name: s
    method: {method}
    {key}
"""
    with pytest.raises(RecipeError, match="is for `distill` stages"):
        load_recipe(write("bad.yaml", text))
