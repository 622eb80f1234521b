"""QLoRA on CPU: real bitsandbytes 4-bit NF4 layers, and LoRA gradients that stay right after an evaluation pass."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import build_tiny_model
from tuneloop import pipeline
from tuneloop.config.schema import ModelRef, Peft
from tuneloop.models.loading import load_model, memory_footprint
from tuneloop.recipes import load_recipe

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _batch(tiny_model: Path) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    texts = ["a library for reading and writing archives", "command-line tool to convert images"] * 2
    batch = tok(texts, return_tensors="pt", padding=True)
    batch["labels"] = batch["input_ids"].clone()
    return batch


def _lora(model):
    from peft import LoraConfig, get_peft_model

    # init_lora_weights=False: B starts non-zero, so A gets a gradient too and both are compared
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, lora_dropout=0.0)
    torch.manual_seed(0)
    return get_peft_model(model, config)


def _lora_grads(model, batch: dict, evaluate_first: bool) -> dict[str, torch.Tensor]:
    if evaluate_first:  # what an evaluation pass or a generation does before training resumes
        model.eval()
        with torch.no_grad():
            model(**batch)
    model.train()
    model.zero_grad()
    model(**batch).loss.backward()
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}


def _dequantized_reference(tiny_model: Path, quantized) -> torch.nn.Module:
    """The same network in float32, with every 4-bit weight replaced by its exact dequantized value."""
    import bitsandbytes.functional as F
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    modules = dict(reference.named_modules())
    for name, module in quantized.named_modules():
        if isinstance(module, Linear4bit):
            weight = F.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
            modules[name].weight.data.copy_(weight.reshape(modules[name].weight.shape))
    return reference


def test_qlora_loads_real_4bit_layers_on_cpu(tiny_model):
    from bitsandbytes.nn import Linear4bit

    model = load_model(str(tiny_model), ModelRef(name=str(tiny_model)), qlora=Peft(type="qlora"))
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert len(layers) == 2 * len(TARGETS)  # every linear layer of both decoder blocks (the head stays)
    assert all(m.weight.dtype == torch.uint8 for m in layers), "4-bit weights are packed two per byte"
    assert all(m.support_avx512bf16_for_cpu is False for m in layers), "the CPU repacking trap must be disarmed"
    assert model.is_loaded_in_4bit
    full = load_model(str(tiny_model), ModelRef(name=str(tiny_model), dtype="float32"))
    linear = sum(m.weight.nbytes for n, m in full.named_modules() if n.endswith(tuple(TARGETS)))
    assert memory_footprint(full) - memory_footprint(model) > 0.7 * linear  # 4 bits instead of 32 in those layers


def test_lora_gradients_after_an_evaluation_pass_match_a_dequantized_fp32_reference(tmp_path):
    """On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights at the first no-grad forward for a kernel that
    has no backward; training after an evaluation then gets wrong LoRA gradients (up to 81% off, measured). tuneloop
    disarms that; here the gradients after an evaluation pass must equal those of the same network in float32."""
    from bitsandbytes.nn import Linear4bit

    # hidden 128: bitsandbytes' CPU repacking works in blocks of 64 columns, so the trap needs layers that wide
    tiny_model = build_tiny_model(tmp_path / "wider", layers=2, hidden=128)
    batch = _batch(tiny_model)
    base = load_model(str(tiny_model), ModelRef(name=str(tiny_model)), qlora=Peft(type="qlora"))
    reference = _lora(_dequantized_reference(tiny_model, base))
    quantized = _lora(base)
    reference.load_state_dict({k: v for k, v in quantized.state_dict().items() if "lora_" in k}, strict=False)
    got = _lora_grads(quantized, batch, evaluate_first=True)
    want = _lora_grads(reference, batch, evaluate_first=False)
    assert got.keys() == want.keys() and len(got) == 2 * 2 * len(TARGETS)
    for name, grad in got.items():
        error = (grad - want[name]).norm() / want[name].norm()
        assert error < 1e-3, f"{name}: LoRA gradient {error:.1%} off the float32 reference"

    from bitsandbytes.nn.modules import has_avx512bf16

    if has_avx512bf16():  # this test can fail: with the repacking left on, the same check finds the error
        trapped = _lora(load_model(str(tiny_model), ModelRef(name=str(tiny_model)), qlora=Peft(type="qlora")))
        for module in trapped.modules():
            if isinstance(module, Linear4bit):
                module.support_avx512bf16_for_cpu = True
        trapped.load_state_dict(quantized.state_dict(), strict=False)
        bad = _lora_grads(trapped, batch, evaluate_first=True)
        worst = max(((bad[n] - want[n]).norm() / want[n].norm()).item() for n in want)
        assert worst > 1e-2


def test_qlora_smoke_run_trains_a_4bit_base_and_records_it(write, tiny_model):
    recipe = f"""
    name: q
    base_model: {tiny_model}
    data: {{source: debian-descriptions, task: synopsis, max_train_rows: 16, max_eval_rows: 4}}
    stages:
      - name: sft
        method: sft
        peft: {{type: qlora, r: 4, alpha: 8, target_modules: all-linear}}
        args: {{max_steps: 2, learning_rate: 1.0e-3, per_device_train_batch_size: 2, max_length: 256,
               optim: paged_adamw_8bit, logging_steps: 1}}
    """
    path = write("q.yaml", recipe)
    result = pipeline.run(load_recipe(path), path, smoke=True)
    (stage,) = result.stages
    assert stage.distributed["quantized_layers"] == 2 * len(TARGETS)
    assert stage.distributed["distributed_type"] == "NO" and stage.world_size == 1
    assert stage.model_memory_bytes > 0
    assert not any("full precision" in n or "stands in" in n for n in stage.notes), stage.notes
    adapter = Path(stage.model_dir)
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
