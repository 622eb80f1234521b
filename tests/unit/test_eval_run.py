"""`tuneloop eval` and the evaluation step of `tuneloop run`, on a tiny random Llama: results, comparisons,
gates, the chat-template guard, classification with parse failures, perplexity and in-training metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.eval.tasks import parse_label

runner = CliRunner()

SUITE = """
name: tiny
tasks:
  - name: synopsis
    data: {source: debian-descriptions, task: synopsis}
    split: test
    max_rows: 6
    metrics: [rougeL, bleu, exact_match]
    generation: {max_new_tokens: 4, batch_size: 4}
  - name: ppl
    kind: perplexity
    data: {source: debian-descriptions, task: synopsis}
    split: test
    max_rows: 6
"""


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("libs", "libs"),
        (" Libs. ", "libs"),
        ("The section is libdevel.", "libdevel"),
        ("python or perl", "python"),  # the earliest mention wins
        ("lib", None),  # a prefix of a label is not the label
        ("python3", None),
        ("", None),
    ],
)
def test_parse_label(answer, label):
    assert parse_label(answer, ["libs", "libdevel", "perl", "python"]) == label


def test_eval_writes_results_reports_and_examples(tiny_model, write, tmp_path):
    suite = write("suite.yaml", SUITE)
    out = tmp_path / "out"
    result = invoke("eval", "--model", str(tiny_model), "--suite", str(suite), "--output", str(out))
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "tuneloop-eval/1"
    (model,) = results["models"]
    assert model["weights_sha256"] and model["chat_template_sha256"]
    syn = model["tasks"]["synopsis"]
    assert syn["rows"] == 6 and syn["data"]["fingerprint"]
    for name in ("rougeL", "bleu", "exact_match"):
        m = syn["metrics"][name]
        assert m["ci"][0] <= m["value"] <= m["ci"][1]
    assert syn["metrics"]["bleu"]["signature"].startswith("nrefs:1|")
    assert syn["serving"]["generated_tokens"] > 0 and syn["serving"]["tokens_per_s"] > 0
    assert len(syn["worst"]["rougeL"]) == 6
    ppl = model["tasks"]["ppl"]["metrics"]["perplexity"]
    assert ppl["value"] > 1 and ppl["higher_is_better"] is False
    examples = [json.loads(line) for line in (out / f"examples-{Path(str(tiny_model)).name}.jsonl").open()]
    assert len(examples) == 12 and examples[0]["references"]
    assert "synopsis" in (out / "report.md").read_text()
    assert "<svg" in (out / "report.html").read_text()


def test_two_models_are_compared_pairwise_and_compare_reproduces_it(tiny_model, write, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    _perturb(other)
    suite = write("suite.yaml", SUITE)
    out = tmp_path / "both"
    result = invoke("eval", "-m", str(tiny_model), "-m", str(other), "--suite", str(suite), "-o", str(out))
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    comps = {(c["task"], c["metric"]): c for c in results["comparisons"]}
    assert set(comps) == {
        ("synopsis", "rougeL"),
        ("synopsis", "bleu"),
        ("synopsis", "exact_match"),
        ("ppl", "perplexity"),
    }
    ppl = comps[("ppl", "perplexity")]
    assert ppl["diff"] == pytest.approx(ppl["b_value"] - ppl["a_value"])
    assert ppl["ci"][0] <= ppl["diff"] <= ppl["ci"][1] and 0 < ppl["p_value"] <= 1
    # the same comparison from the two single-model result directories (the paired statistics were saved)
    a, b = tmp_path / "a", tmp_path / "b"
    for model, where in ((tiny_model, a), (other, b)):
        assert invoke("eval", "-m", str(model), "--suite", str(suite), "-o", str(where)).exit_code == 0
    result = invoke("eval", "--compare", str(a), "--compare", str(b), "-o", str(tmp_path / "cmp"))
    assert result.exit_code == 0, result.output
    again = {
        (c["task"], c["metric"]): c for c in json.loads((tmp_path / "cmp/results.json").read_text())["comparisons"]
    }
    assert again[("ppl", "perplexity")]["diff"] == pytest.approx(ppl["diff"])
    assert again[("ppl", "perplexity")]["p_value"] == pytest.approx(ppl["p_value"])


def _perturb(model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    f = model_dir / "model.safetensors"
    weights = load_file(f)
    g = np.random.default_rng(1)
    for k, v in weights.items():
        if v.dtype.is_floating_point and v.ndim == 2:
            weights[k] = v + 0.5 * v.std() * __import__("torch").tensor(g.standard_normal(v.shape), dtype=v.dtype)
    save_file(weights, f, metadata={"format": "pt"})


def test_model_trained_with_another_chat_template_is_refused(tiny_model, write, tmp_path):
    trained = tmp_path / "trained"
    shutil.copytree(tiny_model, trained)
    record = {"chat_template_sha256": "0" * 64, "format": None}
    (trained / "tuneloop-train.json").write_text(json.dumps(record))
    result = invoke("eval", "-m", str(trained), "--suite", str(write("suite.yaml", SUITE)), "-o", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "was trained with chat template sha256 000000000000" in result.output


def test_model_trained_with_another_system_prompt_is_refused(tiny_model, write, tmp_path):
    trained = tmp_path / "trained"
    shutil.copytree(tiny_model, trained)
    record = {"chat_template_sha256": None, "format": {"style": "chat", "system": "Be terse.", "prompt": "{x}"}}
    (trained / "tuneloop-train.json").write_text(json.dumps(record))
    result = invoke("eval", "-m", str(trained), "--suite", str(write("suite.yaml", SUITE)), "-o", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "format.system='Be terse.'" in result.output


def test_classification_counts_parse_failures_and_scores_labels_by_likelihood(tiny_model, write, tmp_path):
    suite = write(
        "suite.yaml",
        """
        name: cls
        tasks:
          - name: section
            data: {source: debian-descriptions, task: section}
            split: test
            max_rows: 12
            metrics: [accuracy, f1_macro, roc_auc]
            generation: {max_new_tokens: 3}
        """,
    )
    out = tmp_path / "o"
    result = invoke("eval", "-m", str(tiny_model), "--suite", str(suite), "-o", str(out))
    assert result.exit_code == 0, result.output
    task = json.loads((out / "results.json").read_text())["models"][0]["tasks"]["section"]
    info = task["classification"]
    confusion = np.array(info["confusion"])
    assert confusion.sum() == 12  # every row is in the matrix, parse failures included
    assert confusion[:, -1].sum() == info["parse_failures"]  # the last column is "(unparsed)"
    assert info["parse_failures"] > 0  # a random model rarely names a section
    assert "roc_auc" in task["metrics"] or any("roc_auc" in n for n in info["notes"])


def test_perplexity_is_the_loss_on_completion_tokens_only(tiny_model):
    import torch

    from tuneloop.eval.backends import TransformersBackend
    from tuneloop.models.references import load_for_eval, resolve_model

    lm, tok = load_for_eval(resolve_model(str(tiny_model), Path()))
    backend = TransformersBackend(str(tiny_model), tok, lm)
    prompt = [{"role": "user", "content": "Describe apt."}]
    head, tail = backend.render_answer(prompt, "package manager")
    assert tail.startswith("package manager") and tail.endswith("<|im_end|>\n")
    (nll, n), (nll2, n2) = backend.loglik([(head, tail), (head, tail)])
    h = tok(head, add_special_tokens=False)["input_ids"]
    t = tok(tail, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([h + t])
    labels = ids.clone()
    labels[0, : len(h)] = -100
    with torch.no_grad():
        loss = lm(input_ids=ids, labels=labels).loss.item()
    assert n == len(t) and nll / n == pytest.approx(loss, rel=1e-4)
    assert (nll2, n2) == pytest.approx((nll, n))


def test_endpoint_that_does_not_answer_is_a_clear_error(write, tmp_path):
    suite = write("suite.yaml", SUITE.split("  - name: ppl")[0])
    result = invoke("eval", "--endpoint", "http://127.0.0.1:9", "--suite", str(suite), "-o", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "cannot list models at http://127.0.0.1:9/v1/models" in result.output
    assert "MLflow run" not in result.output and not (tmp_path / "o").exists()  # refused before tracking opens


def test_registry_uri_before_the_registry_exists_is_a_clear_error(write, tmp_path):
    result = invoke("eval", "-m", "models:/quickstart@champion", "--suite", str(write("s.yaml", SUITE)))
    assert result.exit_code == 1 and "registry" in result.output


RECIPE = """
name: tiny-run
base_model: {base}
data:
  source: debian-descriptions
  task: synopsis
  max_train_rows: 16
  eval_split: null
stages:
  - name: sft
    method: sft
    args: {{max_steps: 2, per_device_train_batch_size: 4, learning_rate: 1.0e-3, save_steps: 2, max_length: 128,
            logging_steps: 1}}
evaluation:
  tasks:
    - name: synopsis
      split: test
      max_rows: 4
      metrics: [rougeL]
      generation: {{max_new_tokens: 3}}
  during_training: {{every_steps: 1, rows: 2}}
  gate:
{gate}
"""


def test_run_evaluates_base_and_trained_model_and_a_failed_gate_exits_3(tiny_model, write, workspace):
    gate = "    - {metric: rougeL, must_improve: true, p_value: 0.01}"
    recipe = write("r.yaml", RECIPE.format(base=tiny_model, gate=gate))
    result = invoke("run", str(recipe))
    assert result.exit_code == 3, result.output
    assert "gate failed (1 of 1 rules)" in result.output
    assert "rougeL must beat the baseline (p < 0.01)" in result.output and "95% CI" in result.output
    run_dir = next((workspace / "runs" / "tiny-run").iterdir())
    results = json.loads((run_dir / "eval/results.json").read_text())
    assert [m["label"] for m in results["models"]] == ["base", "fine-tuned"]
    assert results["gate"]["passed"] is False
    assert (run_dir / "eval/report.html").is_file()
    record = json.loads((run_dir / "stages/sft/model/tuneloop-train.json").read_text())
    assert record["chat_template_sha256"] == results["models"][1]["chat_template_sha256"]
    # generation metrics were logged during training, next to the loss
    state = json.loads((run_dir / "stages/sft/checkpoint-2/trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "gen_rougeL" in e] == [1, 2]


def test_run_with_a_gate_that_holds_exits_0(tiny_model, write):
    gate = "    - {metric: rougeL, max_drop: 100}"
    result = invoke("run", str(write("r.yaml", RECIPE.format(base=tiny_model, gate=gate))))
    assert result.exit_code == 0, result.output
    assert "fine-tuned" in result.output and "gate passed" in result.output.lower()


def test_eval_applies_a_recipes_gate_to_the_last_model_against_the_first(tiny_model, write, tmp_path):
    gate = "    - {metric: rougeL, must_improve: true}"
    recipe = write("r.yaml", RECIPE.format(base=tiny_model, gate=gate).replace("  during_training", "  #"))
    result = invoke(
        "eval", "-m", str(tiny_model), "-m", str(tiny_model), "--suite", str(recipe), "-o", str(tmp_path / "o")
    )
    assert result.exit_code == 3, result.output  # the same model cannot beat itself
    assert "gate failed" in result.output and "diff +0.00" in result.output
    single = invoke("eval", "-m", str(tiny_model), "--suite", str(recipe), "-o", str(tmp_path / "one"))
    assert single.exit_code == 0, single.output  # one model: nothing to compare, no gate


def test_results_json_is_strict_json_even_when_an_interval_is_undefined():
    from tuneloop.eval.runner import finite

    cleaned = finite({"ci": [float("nan"), np.float64("inf")], "value": np.float32(1.5), "n": 3, "t": (1.0,)})
    assert cleaned == {"ci": [None, None], "value": 1.5, "n": 3, "t": [1.0]}
    json.dumps(cleaned, allow_nan=False)


def test_reward_model_scores_every_answer_as_a_metric_with_ci(tiny_model, write, tmp_path):
    """`reward_model:` on a generation task adds `reward_score`: the mean of the reward model's score of each
    answer after its prompt, the same numbers a direct forward pass gives."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    scorer_dir = tmp_path / "reward"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).save_pretrained(scorer_dir)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(scorer_dir)
    suite = write(
        "suite.yaml",
        f"""
name: rm
tasks:
  - name: synopsis
    data: {{source: debian-descriptions, task: synopsis}}
    split: test
    max_rows: 5
    metrics: [rougeL]
    reward_model: {scorer_dir}
    generation: {{max_new_tokens: 4, batch_size: 4}}
""",
    )
    out = tmp_path / "out"
    result = invoke("eval", "--model", str(tiny_model), "--suite", str(suite), "--output", str(out))
    assert result.exit_code == 0, result.output
    syn = json.loads((out / "results.json").read_text())["models"][0]["tasks"]["synopsis"]
    score = syn["metrics"]["reward_score"]
    assert score["ci"][0] <= score["value"] <= score["ci"][1]
    examples = [json.loads(line) for line in (out / f"examples-{Path(str(tiny_model)).name}.jsonl").open()]
    tok = AutoTokenizer.from_pretrained(scorer_dir)
    scorer = AutoModelForSequenceClassification.from_pretrained(scorer_dir, num_labels=1).eval()
    from tuneloop.data import builtin

    fmt = builtin.task("debian-descriptions", "synopsis").format
    direct = []
    for ex in examples:
        turns = [
            {"role": "system", "content": fmt.system},
            {"role": "user", "content": ex["prompt"]},
            {"role": "assistant", "content": ex["prediction"]},
        ]
        enc = tok(tok.apply_chat_template(turns, tokenize=False), return_tensors="pt")
        with torch.no_grad():
            direct.append(scorer(**enc).logits[0, 0].item())
    assert score["value"] == pytest.approx(sum(direct) / len(direct), rel=1e-4, abs=1e-4)


def test_reward_score_without_a_reward_model_is_refused(write):
    from tuneloop.config.errors import RecipeError
    from tuneloop.recipes import load_suite

    suite = write(
        "suite.yaml",
        """
name: rm
tasks:
  - name: synopsis
    data: {source: debian-descriptions, task: synopsis}
    metrics: [rougeL, reward_score]
""",
    )
    with pytest.raises(RecipeError, match="reward_score` needs the task's `reward_model:`"):
        load_suite(suite)


def test_preference_accuracy_scores_how_often_the_chosen_answer_is_likelier(tiny_model, write, tmp_path):
    """Held-out votes as an evaluation task: per pair, is the chosen answer likelier per token than the rejected
    one? Swapping chosen and rejected turns every win into a loss, so the two accuracies add up to 100."""
    lines = (Path(__file__).parents[2] / "data/debian-descriptions/test.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines[:12]]

    def pairs(flip: bool) -> str:
        out = []
        for i, r in enumerate(rows):
            good, bad = r["synopsis"], rows[(i + 1) % len(rows)]["synopsis"] + " and more words here"
            chosen, rejected = (bad, good) if flip else (good, bad)
            out.append(
                json.dumps(
                    {
                        "prompt": [{"role": "user", "content": r["description"]}],
                        "chosen": [{"role": "assistant", "content": chosen}],
                        "rejected": [{"role": "assistant", "content": rejected}],
                    }
                )
            )
        return "\n".join(out) + "\n"

    write("votes/test.jsonl", pairs(False))
    write("flipped/test.jsonl", pairs(True))
    suite = write(
        "suite.yaml",
        """
        name: held-out
        tasks:
          - {name: votes, kind: preference, data: {source: votes}, split: test}
          - {name: flipped, kind: preference, data: {source: flipped}, split: test}
        """,
    )
    out = tmp_path / "out"
    result = invoke("eval", "--model", str(tiny_model), "--suite", str(suite), "--output", str(out))
    assert result.exit_code == 0, result.output
    (model,) = json.loads((out / "results.json").read_text())["models"]
    votes = model["tasks"]["votes"]["metrics"]["preference_accuracy"]
    flipped = model["tasks"]["flipped"]["metrics"]["preference_accuracy"]
    assert votes["value"] + flipped["value"] == pytest.approx(100.0)
    assert votes["ci"][0] <= votes["value"] <= votes["ci"][1] and votes["higher_is_better"] is True
    bad = write("bad/test.jsonl", json.dumps({"prompt": "x", "completion": "y"}) + "\n")
    suite = write("bad.yaml", f"name: bad\ntasks: [{{name: b, kind: preference, data: {{source: {bad.parent}}}}}]\n")
    result = invoke("eval", "--model", str(tiny_model), "--suite", str(suite), "--output", str(tmp_path / "o2"))
    assert result.exit_code == 2 and "tasks[0].data: dpo needs prompt+chosen+rejected" in result.output  # at validation
