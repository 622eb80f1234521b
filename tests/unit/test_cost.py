"""Cost accounting: the price table, device detection, the arithmetic, and costs in run summaries and results."""

from __future__ import annotations

import json

import pytest

from tuneloop.config.errors import RecipeError
from tuneloop.cost import Price, account, describe, detect_device, load_prices, price_for, safetensors_params, total
from tuneloop.errors import TuneloopError
from tuneloop.recipes import load_recipe

H100 = Price("h100", 3.0, "USD", 989e12, "table")
RECIPE = """name: r
base_model: smollm2-135m-instruct
data: {source: debian-descriptions, task: synopsis}
stages: [{name: sft, method: sft}]
"""


def test_training_cost_is_devices_times_hours_times_price_and_6NT_flops():
    rec = account(H100, wall_s=1800, devices=8, tokens=10**9, params=7 * 10**9, kind="training", busy_s=1500)
    assert rec["device_hours"] == pytest.approx(4.0)
    assert rec["money"] == pytest.approx(12.0)
    assert rec["flops"] == 6 * 7 * 10**18
    assert rec["mfu"] == pytest.approx(6 * 7e18 / (1500 * 8 * 989e12))


def test_inference_flops_are_2NT_and_cpu_runs_have_no_mfu():
    cpu = price_for("cpu-2")
    rec = account(cpu, wall_s=3600, devices=1, tokens=1000, params=135 * 10**6, kind="inference")
    assert rec["flops"] == 2 * 135 * 10**6 * 1000
    assert rec["mfu"] is None and rec["money"] == pytest.approx(cpu.per_hour)


def test_totals_add_up_and_describe_reads_well():
    a = account(H100, 3600, 1, 100, 10, "training")
    b = account(H100, 1800, 2, 50, 10, "inference")
    t = total([a, b, {}])
    assert t["money"] == pytest.approx(6.0) and t["device_hours"] == pytest.approx(2.0) and t["tokens"] == 150
    assert describe(a).startswith("3.0000 USD · 1.0000 device-h (1× h100 at 3/h)")


def test_every_shipped_device_has_a_price_and_gpus_a_peak():
    table = load_prices()
    assert table["currency"] == "USD"
    for name, spec in table["devices"].items():
        assert spec["price_per_hour"] > 0, name
        assert spec["kind"] in ("gpu", "cpu"), name
        assert spec["kind"] == "cpu" or spec["peak_tflops"] > 0, name


@pytest.mark.parametrize(
    ("gpu", "device"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L4", "l4"),
    ],
)
def test_gpu_is_detected_by_name(monkeypatch, gpu, device):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _i=0: gpu)
    assert detect_device(load_prices()) == device


def test_unknown_gpu_asks_for_a_price_table_entry(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _i=0: "Imaginary X1")
    with pytest.raises(TuneloopError, match="'Imaginary X1' is not in the price table"):
        detect_device(load_prices())


@pytest.mark.parametrize(("cores", "device"), [(2, "cpu-2"), (3, "cpu-4"), (12, "cpu-16"), (200, "cpu-64")])
def test_cpu_instance_is_the_smallest_with_enough_cores(monkeypatch, cores, device):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert detect_device(load_prices()) == device


def test_recipe_price_overrides_the_table():
    price = price_for("l4", per_hour=0.25)
    assert price.per_hour == 0.25 and price.source == "recipe" and price.peak_flops == 121e12


def test_unknown_device_in_a_recipe_is_a_located_error(write):
    path = write("r.yaml", RECIPE + "cost:\n  device: h10\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "r.yaml:6 cost.device: unknown device 'h10'; did you mean h100?" in str(e.value)


def test_a_recipe_may_bring_its_own_price_table(write):
    write("prices.yaml", "currency: EUR\ndevices:\n  box: {price_per_hour: 2.5, kind: cpu, cores: 2}\n")
    path = write("r.yaml", RECIPE + "cost: {device: box, prices: prices.yaml}\n")
    from tuneloop.cost import recipe_price

    recipe = load_recipe(path)
    price = recipe_price(recipe.cost, path.parent)
    assert (price.device, price.per_hour, price.currency) == ("box", 2.5, "EUR")


def test_parameter_count_from_safetensors_headers_matches_the_model(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    # tied embeddings are stored once, as num_parameters() counts them
    assert safetensors_params(str(tiny_model)) == model.num_parameters()


def test_run_summary_and_results_carry_costs(tiny_model, write, workspace):
    from typer.testing import CliRunner

    from tuneloop.cli import app

    recipe = write(
        "r.yaml",
        f"""
        name: priced
        base_model: {tiny_model}
        data: {{source: debian-descriptions, task: synopsis, max_train_rows: 16, eval_split: null}}
        stages:
          - {{name: sft, method: sft, args: {{max_steps: 2, per_device_train_batch_size: 4, max_length: 256}}}}
        cost: {{device: l4}}
        evaluation:
          tasks: [{{name: synopsis, split: test, max_rows: 4, metrics: [rougeL], generation: {{max_new_tokens: 3}}}}]
        """,
    )
    result = CliRunner().invoke(app, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "cost: training" in result.output and "1× l4 at 0.8/h" in result.output
    run_dir = next((workspace / "runs" / "priced").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    stage = summary["stages"][0]["cost"]
    assert stage["device"] == "l4" and stage["kind"] == "training" and stage["tokens"] > 0
    assert stage["flops"] == 6 * stage["parameters"] * stage["tokens"]
    assert stage["mfu"] is not None  # a GPU device from the table has a peak, even when priced on a CPU run
    cost = summary["cost"]
    assert cost["total"]["money"] == pytest.approx(cost["training"]["money"] + cost["evaluation"]["money"])
    results = json.loads((run_dir / "eval/results.json").read_text())
    serving = results["models"][1]["tasks"]["synopsis"]["serving"]
    assert serving["cost_per_1k_tokens"] == pytest.approx(1000 * serving["cost"]["money"] / serving["generated_tokens"])
