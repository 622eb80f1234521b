"""Several references per example: from suite data (a list `completion` or a `references` column) through the
metrics (sacrebleu's reference streams, rouge-score's best reference, exact match against any) and the bootstrap
to results.json and the report, on the tiny random model; one string stays exactly what it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config.evaluation import EvalTask
from tuneloop.config.schema import Data
from tuneloop.eval import metrics as M
from tuneloop.eval.tasks import load_task
from tuneloop.recipes import load_suite

PREDS = ["the cat is on the mat", "there is a dog in the garden", "birds sing in the morning"]
TWO = [
    ["the cat sat on the mat", "a cat is on the mat"],
    ["a dog is in the garden", "there is one dog"],
    ["birds sing at dawn", "in the morning the birds sing"],
]


def streams(references: list[list[str | None]]) -> list[list[str | None]]:
    """sacrebleu's layout: stream j holds every example's j-th reference (None where an example has fewer)."""
    width = max(map(len, references))
    return [[r[j] if j < len(r) else None for r in references] for j in range(width)]


# ---- metrics ---------------------------------------------------------------------------------------------------


def test_two_references_give_sacrebleus_corpus_bleu_and_chrf_and_nrefs_2():
    out = M.generation_metrics(PREDS, TWO, ["bleu", "chrf"], resamples=50)
    bleu = sacrebleu.corpus_bleu(PREDS, streams(TWO))
    chrf = sacrebleu.corpus_chrf(PREDS, streams(TWO))
    assert out["bleu"].value == bleu.score and out["chrf"].value == chrf.score
    assert out["bleu"].signature.startswith("nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert out["chrf"].signature.startswith("nrefs:2|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")


def test_a_variable_number_of_references_is_padded_with_none_and_says_nrefs_var():
    refs = [TWO[0], [TWO[1][0]], [*TWO[2], "birds are singing"]]
    out = M.generation_metrics(PREDS, refs, ["bleu", "chrf"], resamples=50)
    assert out["bleu"].value == sacrebleu.corpus_bleu(PREDS, streams(refs)).score
    assert out["chrf"].value == sacrebleu.corpus_chrf(PREDS, streams(refs)).score
    assert out["bleu"].signature.startswith("nrefs:var|") and out["chrf"].signature.startswith("nrefs:var|")


def test_a_hypothesis_matching_the_second_reference_scores_higher_than_against_the_first_alone():
    preds = ["a small red house stands by the river", "the old man reads the morning paper"]
    refs = [
        ["there is a tiny home near the water", "a small red house stands by the river"],
        ["an elderly person looks at the news", "the old man reads the morning paper"],
    ]
    first = [r[:1] for r in refs]
    names = ["bleu", "chrf", "rougeL", "exact_match", "token_f1"]
    both, alone = M.generation_metrics(preds, refs, names, resamples=50), M.generation_metrics(preds, first, names)
    for name in names:
        assert both[name].value > alone[name].value, name
    assert both["bleu"].value == pytest.approx(100.0) and both["exact_match"].value == 100.0


def test_rouge_is_rouge_scores_score_multi_the_best_reference():
    scorer = rouge_scorer.RougeScorer(M.ROUGE_TYPES, use_stemmer=True)
    out = M.generation_metrics(PREDS, TWO, M.ROUGE_TYPES, resamples=10)
    for t in M.ROUGE_TYPES:
        multi = [100 * scorer.score_multi(r, p)[t].fmeasure for p, r in zip(PREDS, TWO, strict=True)]
        best = [100 * max(scorer.score(x, p)[t].fmeasure for x in r) for p, r in zip(PREDS, TWO, strict=True)]
        assert out[t].per_example == multi == best


def test_exact_match_counts_a_match_with_any_reference():
    out = M.generation_metrics(
        ["Paris", "Lyon", "Nice"], [["London", "paris!"], ["Lyon"], ["Rome", "Oslo"]], ["exact_match"]
    )
    assert out["exact_match"].per_example == [100.0, 100.0, 0.0]


def test_single_reference_numbers_are_what_sacrebleu_and_rouge_score_give_for_one_string():
    """One string per example is one reference stream, as before: nrefs:1 and the libraries' own numbers."""
    refs = [r[0] for r in TWO]
    out = M.generation_metrics(PREDS, [[r] for r in refs], ["bleu", "chrf", "rougeL"], resamples=50)
    assert out["bleu"].value == sacrebleu.corpus_bleu(PREDS, [refs]).score
    assert out["chrf"].value == sacrebleu.corpus_chrf(PREDS, [refs]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [100 * scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDS, refs, strict=True)]
    assert out["rougeL"].value == pytest.approx(np.mean(rouge), rel=1e-12)
    assert out["bleu"].signature.startswith("nrefs:1|")


def test_bootstrap_and_paired_comparison_work_on_several_references():
    rng = np.random.default_rng(0)
    words = ["the", "cat", "dog", "sat", "ran", "on", "mat", "a", "big", "small", "red", "house", "tree"]
    refs = [[" ".join(rng.choice(words, 8)) for _ in range(1 + i % 3)] for i in range(60)]
    good = [" ".join(w if rng.random() < 0.8 else "zzz" for w in r[-1].split()) for r in refs]
    bad = [" ".join(w if rng.random() < 0.3 else "zzz" for w in r[-1].split()) for r in refs]
    names = ["bleu", "chrf", "rougeL", "exact_match"]
    a, b = M.generation_metrics(bad, refs, names, resamples=200), M.generation_metrics(good, refs, names, resamples=200)
    for name in names:
        for m in (a[name], b[name]):
            assert m.ci_low <= m.value <= m.ci_high, name
            assert m.value == pytest.approx(M.point_score(m.stats, M.score_fn(name)))
    for name in ("bleu", "chrf", "rougeL"):
        paired = M.paired_bootstrap(a[name].stats, b[name].stats, M.score_fn(name), resamples=200)
        assert paired["diff"] > 0 and paired["p_value"] < 0.05, name


# ---- suites: data to results -----------------------------------------------------------------------------------

runner = CliRunner()
ROWS = [
    ("Name the capital of France.", ["Paris", "Paris, France"]),
    ("Say hello in French.", ["bonjour", "salut", "bonjour à tous"]),
    ("What colour is the sky?", ["blue"]),
    ("Count to three.", ["one two three", "1 2 3"]),
]
SUITE = """
name: refs
tasks:
  - name: listed
    data: {{source: {listed}}}
    split: test
    metrics: [bleu, chrf, rougeL, exact_match]
    generation: {{max_new_tokens: 4, batch_size: 4}}
  - name: column
    data: {{source: {column}}}
    split: test
    metrics: [bleu, chrf, rougeL, exact_match]
    generation: {{max_new_tokens: 4, batch_size: 4}}
  - name: ppl
    kind: perplexity
    data: {{source: {listed}}}
    split: test
"""


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _suite(write, rows=ROWS) -> tuple:
    """A suite whose `listed` task keeps the references in `completion`, `column` in a `references` column."""
    kept = rows
    listed = write("listed/test.jsonl", _jsonl([{"prompt": p, "completion": r} for p, r in kept]))
    column = write("column/test.jsonl", _jsonl([{"prompt": p, "references": r} for p, r in kept]))
    return write("suite.yaml", SUITE.format(listed=listed.parent, column=column.parent)), kept


def test_eval_scores_a_suite_with_several_references_per_row_like_sacrebleu(tiny_model, write, tmp_path):
    suite, rows = _suite(write)
    load_suite(suite)  # prompt + references and no completion validates as an evaluation task
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "-m", str(tiny_model), "--suite", str(suite), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 rows of" in result.output and "up to 3 references a row" in result.output
    assert "(perplexity scores the first)" in result.output
    (model,) = json.loads((out / "results.json").read_text())["models"]
    examples = [json.loads(line) for line in next(out.glob("examples-*.jsonl")).open()]
    for task in ("listed", "column"):
        metrics = model["tasks"][task]["metrics"]
        preds = [e["prediction"] for e in examples if e["task"] == task]
        assert [e["references"] for e in examples if e["task"] == task] == [r for _, r in rows]
        assert metrics["bleu"]["value"] == sacrebleu.corpus_bleu(preds, streams([r for _, r in rows])).score
        assert metrics["chrf"]["value"] == sacrebleu.corpus_chrf(preds, streams([r for _, r in rows])).score
        for name in ("bleu", "chrf"):
            assert metrics[name]["signature"].startswith("nrefs:var|")
            assert metrics[name]["ci"][0] <= metrics[name]["value"] <= metrics[name]["ci"][1]
    assert model["tasks"]["listed"]["metrics"] == model["tasks"]["column"]["metrics"]
    report = (out / "report.md").read_text()
    assert "bleu signature: `nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp|version:" in report
    assert "ppl" in model["tasks"] and model["tasks"]["ppl"]["metrics"]["perplexity"]["value"] > 1


def test_perplexity_scores_the_first_reference(tiny_model, write, tmp_path):
    """A list of references is scored by its first one: the same number as the first reference alone."""
    many = write("many/test.jsonl", _jsonl([{"prompt": p, "completion": r} for p, r in ROWS]))
    first = write("first/test.jsonl", _jsonl([{"prompt": p, "completion": r[0]} for p, r in ROWS]))
    suite = write(
        "suite.yaml",
        f"""
        name: ppl
        tasks:
          - {{name: many, kind: perplexity, data: {{source: {many.parent}}}, split: test}}
          - {{name: first, kind: perplexity, data: {{source: {first.parent}}}, split: test}}
        """,
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "-m", str(tiny_model), "--suite", str(suite), "-o", str(out)])
    assert result.exit_code == 0, result.output
    tasks = json.loads((out / "results.json").read_text())["models"][0]["tasks"]
    assert tasks["many"]["metrics"]["perplexity"]["value"] == tasks["first"]["metrics"]["perplexity"]["value"]


def test_the_models_own_answer_as_second_reference_scores_higher_and_says_nrefs_2(tiny_model, write, tmp_path):
    """First the first references alone (nrefs:1), then each row with the answer the model gave as its second
    reference: every metric rises, and the numbers are sacrebleu's for the two streams."""
    metrics = ["bleu", "chrf", "rougeL", "exact_match"]

    def run(name: str, rows: list[dict]) -> tuple[dict, list[str]]:
        path = write(f"{name}/test.jsonl", _jsonl(rows))
        suite = write(
            f"{name}.yaml",
            f"name: {name}\ntasks: [{{name: t, data: {{source: {path.parent}}}, split: test, "
            f"metrics: [{', '.join(metrics)}], generation: {{max_new_tokens: 6}}}}]\n",
        )
        out = tmp_path / name
        result = runner.invoke(app, ["eval", "-m", str(tiny_model), "--suite", str(suite), "-o", str(out)])
        assert result.exit_code == 0, result.output
        examples = [json.loads(line) for line in next(out.glob("examples-*.jsonl")).open()]
        return json.loads((out / "results.json").read_text())["models"][0]["tasks"]["t"]["metrics"], [
            e["prediction"] for e in examples
        ]

    alone, answers = run("alone", [{"prompt": p, "completion": r[0]} for p, r in ROWS])
    refs = [[r[0], a] for (_, r), a in zip(ROWS, answers, strict=True)]
    both, again = run("both", [{"prompt": p, "completion": r} for (p, _), r in zip(ROWS, refs, strict=True)])
    assert again == answers  # greedy decoding: the same answers
    assert alone["bleu"]["signature"].startswith("nrefs:1|") and both["bleu"]["signature"].startswith("nrefs:2|")
    assert both["chrf"]["signature"].startswith("nrefs:2|")
    assert both["bleu"]["value"] == sacrebleu.corpus_bleu(answers, streams(refs)).score
    assert both["chrf"]["value"] == sacrebleu.corpus_chrf(answers, streams(refs)).score
    assert both["exact_match"]["value"] == 100.0
    for name in ("bleu", "chrf", "exact_match"):  # rougeL: rouge-score's tokenizer drops the random model's dots
        assert both[name]["value"] > alone[name]["value"], name


def test_one_string_a_one_item_list_and_a_references_column_are_the_same_reference(write):
    """One string per row is read exactly as before ([string]); wrapping it in a list or a `references` column
    changes nothing (a references column next to a completion replaces it), so neither do the numbers."""
    shapes = {
        "string": [{"prompt": p, "completion": r[0]} for p, r in ROWS],
        "one_item": [{"prompt": p, "completion": r[:1]} for p, r in ROWS],
        "column": [{"prompt": p, "completion": "ignored", "references": r[0]} for p, r in ROWS],
        "chat": [
            {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": r[0]}]}
            for p, r in ROWS
        ],
    }
    preds = ["Paris is the capital", "bonjour", "the sky is blue", "one two"]
    got = {}
    for name, rows in shapes.items():
        path = write(f"{name}/test.jsonl", _jsonl(rows))
        task = load_task(EvalTask(name=name, data=Data(source=str(path.parent))), None, path.parent)
        assert task.references == [[r[0]] for _, r in ROWS], name
        got[name] = M.generation_metrics(preds, task.references, ["bleu", "chrf", "rougeL"], resamples=100)
    values = {name: [(m.value, m.ci_low, m.ci_high, m.signature) for m in g.values()] for name, g in got.items()}
    assert values["string"] == values["one_item"] == values["column"] == values["chat"]
    assert got["string"]["bleu"].value > 0 and got["string"]["bleu"].signature.startswith("nrefs:1|")
    assert got["string"]["bleu"].value == sacrebleu.corpus_bleu(preds, [[r[0] for _, r in ROWS]]).score


@pytest.mark.parametrize(
    ("refs", "says"),
    [
        ([], "`completion` is an empty list; it must be a string, a list of {role, content} turns, or a list of"),
        (["Paris", ""], "`completion` has '' at 2; a list of references holds non-empty strings"),
        (["Paris", None], "`completion` has None at 2; a list of references holds non-empty strings"),
        (["Paris", "\t"], "`completion` has '\\t' at 2; a list of references holds non-empty strings"),
    ],
)
def test_a_bad_reference_list_names_the_file_and_row_before_the_model_loads(refs, says, tiny_model, write, tmp_path):
    rows = [{"prompt": p, "completion": r} for p, r in ROWS]
    rows[2]["completion"] = refs
    path = write("bad/test.jsonl", _jsonl(rows))
    suite = write("suite.yaml", f"name: bad\ntasks: [{{name: t, data: {{source: {path.parent}}}, split: test}}]\n")
    result = runner.invoke(app, ["eval", "-m", str(tiny_model), "--suite", str(suite), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output  # the suite's data is checked as it loads, like a recipe's
    message = " ".join(result.output.split())
    assert f"tasks[0].data.source: {path.name}:3: {says}" in message or f"/{path.name}:3: {says}" in message
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_a_classification_row_with_several_labels_is_refused(tiny_model, write, tmp_path):
    path = write("cls/test.jsonl", _jsonl([{"prompt": "Is it good?", "completion": ["good", "bad"]}]))
    suite = write(
        "suite.yaml",
        f"name: c\ntasks: [{{name: c, kind: classification, labels: [good, bad], data: {{source: {path.parent}}}, "
        "split: test}]\n",
    )
    result = runner.invoke(app, ["eval", "-m", str(tiny_model), "--suite", str(suite), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "a classification row has one true label, got 2 references" in " ".join(result.output.split())
