"""Metrics equal their reference implementations, hand-checked toys agree, and the vectorised bootstrap is exact."""

from __future__ import annotations

import math
import socket
import sys
from typing import ClassVar

import numpy as np
import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

from tuneloop.errors import TuneloopError
from tuneloop.eval import bootstrap as B
from tuneloop.eval import metrics as M

CASES = {
    "plain": (
        ["The cat sat on the mat.", "It is raining in Paris today.", "He reads a book."],
        [["The cat is on the mat."], ["Today it rains in Paris."], ["He is reading a book."]],
    ),
    "empty_prediction": (["", "a b c d e f"], [["something else here"], ["a b c d e f"]]),
    "empty_reference": (["some words here", "a b c d e"], [[""], ["a b c d e"]]),
    "unicode": (
        ["Ça coûte 5 € à Zürich, señor.", "我喜欢猫。", "great job 🎉🎉 naïve café"],
        [["Ça coûte 5 € à Zürich !"], ["我很喜欢猫。"], ["great job 🎉 naive cafe"]],
    ),
    "multi_ref": (
        ["the cat is on the mat", "there is a dog in the garden"],
        [["the cat sat on the mat", "a cat is on the mat"], ["a dog is in the garden", "there is one dog"]],
    ),
    "single_example": (["the quick brown fox jumps"], [["the quick brown fox jumped over it"]]),
}
NEWLINES = (["the cat sat.\nthe dog ran away.", "one line"], [["the dog ran away.\nthe cat sat."], ["one line"]])


def streams(references: list[list[str]]) -> list[list[str]]:
    """sacrebleu's layout: stream j holds every example's j-th reference."""
    return [list(s) for s in zip(*references, strict=True)]


# ---- BLEU / chrF: sacrebleu ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_bleu_and_chrf_equal_sacrebleu_corpus_score(case):
    preds, refs = CASES[case]
    out = M.generation_metrics(preds, refs, ["bleu", "chrf"], resamples=50)
    assert out["bleu"].value == BLEU().corpus_score(preds, streams(refs)).score
    assert out["chrf"].value == CHRF().corpus_score(preds, streams(refs)).score
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        metric.corpus_score(preds, streams(refs))  # sacrebleu knows the reference count only after scoring
        assert out[name].signature == metric.get_signature().format()
    assert out["bleu"].signature.startswith(f"nrefs:{len(refs[0])}|case:mixed|eff:no|tok:13a|smooth:exp|")


@pytest.mark.parametrize("case", CASES)
def test_per_example_bleu_and_chrf_are_sacrebleu_sentence_scores(case):
    preds, refs = CASES[case]
    out = M.generation_metrics(preds, refs, ["bleu", "chrf"], resamples=10)
    sent = BLEU(effective_order=True)
    assert out["bleu"].per_example == [sent.sentence_score(p, r).score for p, r in zip(preds, refs, strict=True)]
    assert out["chrf"].per_example == [CHRF().sentence_score(p, r).score for p, r in zip(preds, refs, strict=True)]


def test_variable_reference_counts_are_padded_like_sacrebleu_documents():
    preds = ["the cat is on the mat", "a dog", "birds sing in the morning"]
    refs = [["the cat sat on the mat", "a cat is on the mat", "cat on mat"], ["a dog barks"], ["birds sing", "x"]]
    padded = [
        ["the cat sat on the mat", "a dog barks", "birds sing"],
        ["a cat is on the mat", None, "x"],
        ["cat on mat", None, None],
    ]
    out = M.generation_metrics(preds, refs, ["bleu", "chrf"], resamples=10)
    assert out["bleu"].value == BLEU().corpus_score(preds, padded).score
    assert out["chrf"].value == CHRF().corpus_score(preds, padded).score
    assert out["bleu"].signature.startswith("nrefs:var|")


def test_sacrebleu_silently_truncates_ragged_streams_which_is_why_we_pad():
    preds = ["a dog", "birds sing"]
    ragged = [["a dog barks", "birds sing"], ["a dog"]]  # second stream shorter: zip drops example 2
    assert (
        BLEU().corpus_score(preds, ragged).score == BLEU().corpus_score(preds[:1], [["a dog barks"], ["a dog"]]).score
    )


def test_reference_lists_are_checked_before_scoring():
    with pytest.raises(TuneloopError, match="example 1: references must be a non-empty list"):
        M.generation_metrics(["a", "b"], [["a"], []], ["bleu"])
    with pytest.raises(TuneloopError, match="example 0"):
        M.generation_metrics(["a"], ["a"], ["bleu"])  # a bare string is not a reference list
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        M.generation_metrics(["a", "b"], [["a"]], ["bleu"])


def test_unknown_metric_name_suggests_closest():
    with pytest.raises(TuneloopError, match="'rougel' \\(did you mean 'rougeL'\\?\\)"):
        M.generation_metrics(["a"], [["a"]], ["rougel"])
    with pytest.raises(TuneloopError, match="evaluate_metric"):
        M.generation_metrics(["a"], [["a"]], ["evaluate:bleu"])


# ---- ROUGE: rouge-score ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [*CASES, "newlines"])
def test_rouge_is_rouge_score_per_example_max_over_references_averaged(case):
    preds, refs = NEWLINES if case == "newlines" else CASES[case]
    scorer = rouge_scorer.RougeScorer(M.ROUGE_TYPES, use_stemmer=True)
    out = M.generation_metrics(preds, refs, M.ROUGE_TYPES, resamples=10)
    for t in M.ROUGE_TYPES:
        per = [max(scorer.score(r, p)[t].fmeasure for r in rs) * 100 for p, rs in zip(preds, refs, strict=True)]
        assert out[t].per_example == pytest.approx(per, abs=1e-12)
        assert out[t].value == pytest.approx(np.mean(per), rel=1e-12)


def test_rouge_keeps_rouge_score_tokenizer_which_drops_non_latin_text():
    out = M.generation_metrics(["我喜欢猫。"], [["我喜欢猫。"]], ["rouge1", "chrf"], resamples=10)
    assert out["rouge1"].value == 0.0  # rouge-score keeps only [a-z0-9]; chrF sees the characters
    assert out["chrf"].value == 100.0


def test_rougelsum_splits_sentences_on_newlines():
    out = M.generation_metrics(*NEWLINES, ["rougeL", "rougeLsum"], resamples=10)
    assert out["rougeLsum"].per_example[0] == 100.0 > out["rougeL"].per_example[0]


# ---- exact match / token F1: SQuAD v1.1 ------------------------------------------------------------------------


def test_exact_match_and_token_f1_by_hand():
    out = M.generation_metrics(
        ["The cat.", "x y z", "a b c", "Paris", ""],
        [["cat"], ["y z w"], ["b c d"], ["London", "paris!"], [""]],
        ["exact_match", "token_f1"],
        resamples=10,
    )
    # "The cat." -> "cat"; "x y z" vs "y z w": P = R = 2/3; "a b c" loses the article "a": P = 1, R = 2/3 -> 0.8;
    # max over references; empty vs empty: exact match 1 but F1 0, as in the v1.1 script
    assert out["exact_match"].per_example == [100.0, 0.0, 0.0, 100.0, 100.0]
    assert out["token_f1"].per_example == pytest.approx([100.0, 200 / 3, 80.0, 100.0, 0.0])
    assert round(out["token_f1"].per_example[1], 2) == 66.67
    assert out["exact_match"].value == pytest.approx(60.0)


# ---- similarity ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    return M.embedder()


def test_similarity_with_real_minilm(minilm):
    preds = ["A man is playing a guitar.", "A man is playing a guitar.", "A man is playing a guitar."]
    refs = [["A man is playing a guitar."], ["The stock market fell sharply today."], ["Quarterly taxes", preds[0]]]
    out = M.generation_metrics(preds, refs, ["similarity"], embedder=minilm, resamples=10)
    identical, unrelated, best_of_two = out["similarity"].per_example
    assert identical == pytest.approx(100.0, abs=1e-3) and best_of_two == pytest.approx(100.0, abs=1e-3)
    assert unrelated < 40.0


class FakeEmbedder:
    """Embeds by a lookup table so the similarity arithmetic can be checked by hand."""

    table: ClassVar[dict[str, list[float]]] = {"x": [1.0, 0.0], "y": [0.0, 1.0], "xy": [1.0, 1.0], "-x": [-1.0, 0.0]}

    def encode(self, texts, **kwargs):
        assert kwargs["normalize_embeddings"]
        v = np.array([self.table[t] for t in texts])
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_similarity_is_max_cosine_over_references_in_points():
    out = M.generation_metrics(["x", "x", "xy"], [["y"], ["-x", "x"], ["x"]], ["similarity"], embedder=FakeEmbedder())
    assert out["similarity"].per_example == pytest.approx([0.0, 100.0, 100 / math.sqrt(2)])


# ---- classification: scikit-learn -----------------------------------------------------------------------------

LABELS = ["dog", "cat", "fox"]  # deliberately not sorted
Y_TRUE = ["cat", "cat", "cat", "dog", "dog", "fox", "fox"]
Y_PRED = ["cat", "cat", "dog", "dog", "fox", "fox", None]


def sk(y_pred):
    return ["(unparsed)" if y is None else y for y in y_pred]


def test_classification_by_hand_with_a_parse_failure():
    out, info = M.classification_metrics(Y_TRUE, Y_PRED, LABELS, None, resamples=50)
    v = {k: m.value for k, m in out.items()}
    # per label (dog, cat, fox): tp 1, 2, 1; predicted 2, 2, 2; true 2, 3, 2; the None sits in fox's row only
    assert v["accuracy"] == pytest.approx(100 * 4 / 7)
    assert v["precision_macro"] == pytest.approx(100 * (1 / 2 + 2 / 2 + 1 / 2) / 3)
    assert v["recall_macro"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert v["f1_macro"] == pytest.approx(100 * (2 / 4 + 4 / 5 + 2 / 4) / 3)  # F1 = 2 tp / (true + predicted)
    assert v["precision_micro"] == pytest.approx(100 * 4 / 6)  # the unparsed answer predicts no label ...
    assert v["recall_micro"] == pytest.approx(100 * 4 / 7)  # ... but misses its true one
    assert v["f1_micro"] == pytest.approx(100 * 8 / 13)
    assert info["parse_failures"] == 1
    assert info["labels"] == LABELS
    assert info["confusion"] == [[1, 0, 1, 0], [1, 2, 0, 0], [0, 0, 1, 1]]  # columns dog, cat, fox, (unparsed)
    assert out["accuracy"].per_example[-1] == 0.0  # a parse failure is wrong, never dropped
    assert "roc_auc" not in out and "no label scores" in info["notes"][0]


def test_classification_point_estimates_equal_sklearn():
    rng = np.random.default_rng(3)
    y_true = list(rng.choice(LABELS, 300))
    y_pred = [y if rng.random() < 0.6 else rng.choice([*LABELS, None, "wolf"]) for y in y_true]
    out, info = M.classification_metrics(y_true, y_pred, LABELS, None, resamples=20)
    assert out["accuracy"].value == pytest.approx(100 * accuracy_score(y_true, sk(y_pred)))
    for avg in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, sk(y_pred), labels=LABELS, average=avg, zero_division=0)
        assert [out[f"{m}_{avg}"].value for m in ("precision", "recall", "f1")] == pytest.approx(
            [100 * p, 100 * r, 100 * f]
        )
    assert info["parse_failures"] == sum(y not in LABELS for y in y_pred)
    assert any("not one of the labels" in n for n in info["notes"])


def test_vectorised_prf_on_a_resample_equals_sklearn_on_that_resample():
    out, _ = M.classification_metrics(Y_TRUE, Y_PRED, LABELS, None, resamples=10)
    yt, yp = np.array(Y_TRUE), np.array(sk(Y_PRED))
    for idx in ([0, 0, 1, 6, 6, 6, 3], [5, 5, 5, 5, 5, 5, 5], [3, 4, 3, 4, 0, 1, 2], [6, 6, 6, 6, 6, 6, 0]):
        for avg in ("macro", "micro"):
            want = precision_recall_fscore_support(yt[idx], yp[idx], labels=LABELS, average=avg, zero_division=0)
            for name, w in zip(("precision", "recall", "f1"), want[:3], strict=False):
                stats = out[f"{name}_{avg}"].stats
                got = M.score_fn(f"{name}_{avg}")(stats[idx].sum(0, keepdims=True))[0]
                assert got == pytest.approx(100 * w), (idx, name, avg)


def test_bootstrap_draws_are_index_arrays_and_match_sklearn_per_resample():
    out, _ = M.classification_metrics(Y_TRUE, Y_PRED, LABELS, None, resamples=10)
    draws = np.random.default_rng(11).integers(0, len(Y_TRUE), (25, len(Y_TRUE)))
    got = B.bootstrap_scores(out["f1_macro"].stats, M.score_fn("f1_macro"), resamples=25, seed=11)
    yt, yp = np.array(Y_TRUE), np.array(sk(Y_PRED))
    want = [
        precision_recall_fscore_support(yt[i], yp[i], labels=LABELS, average="macro", zero_division=0)[2] for i in draws
    ]
    assert got == pytest.approx(100 * np.array(want))


def test_roc_auc_binary_by_hand():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    out, info = M.classification_metrics(["no", "no", "yes", "yes"], ["no"] * 4, ["no", "yes"], probs, ["roc_auc"])
    # positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of the 4 pairs are ordered correctly
    assert out["roc_auc"].value == pytest.approx(75.0)
    assert info["notes"] == []


def test_roc_auc_multiclass_equals_sklearn_and_weighted_resamples_too():
    rng = np.random.default_rng(5)
    y_true = list(rng.choice(LABELS, 60))
    logits = rng.normal(size=(60, 3)) + 1.5 * np.array([[y == lab for lab in LABELS] for y in y_true])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs[:4] = probs[4]  # ties
    out, _ = M.classification_metrics(y_true, y_true, LABELS, probs, ["roc_auc"], resamples=20)
    order = np.argsort(LABELS)
    kw = {"multi_class": "ovr", "average": "macro", "labels": sorted(LABELS)}
    assert out["roc_auc"].value == pytest.approx(100 * roc_auc_score(y_true, probs[:, order], **kw))
    stats, fn = out["roc_auc"].stats, M.score_fn("roc_auc")
    assert B.point_score(stats, fn) == pytest.approx(out["roc_auc"].value)
    for idx in (np.arange(60)[::-1], rng.integers(0, 60, 60), rng.integers(0, 60, 60)):
        counts = np.bincount(idx, minlength=60)[None].astype(float)
        yt = np.array(y_true)[idx]
        assert fn(counts, stats)[0] == pytest.approx(100 * roc_auc_score(yt, probs[idx][:, order], **kw))


def test_roc_auc_is_left_out_with_a_note_when_a_class_has_no_examples():
    probs = np.full((3, 3), 1 / 3)
    out, info = M.classification_metrics(["dog", "cat", "dog"], ["dog"] * 3, LABELS, probs)
    assert "roc_auc" not in out and "accuracy" in out
    assert info["notes"] == ["roc_auc not computed: no example has true label 'fox'"]


def test_true_labels_outside_the_label_set_are_an_error():
    with pytest.raises(TuneloopError, match="'wolf'"):
        M.classification_metrics(["wolf"], ["dog"], LABELS, None)


# ---- perplexity, lengths ---------------------------------------------------------------------------------------


def test_perplexity_of_two_examples_with_known_nll():
    m = M.perplexity_metric([2 * math.log(2), 2 * math.log(8)], [2, 2], resamples=100)
    assert m.value == pytest.approx(4.0)  # exp((2 ln 2 + 2 ln 8) / 4) = sqrt(16)
    assert m.per_example == pytest.approx([2.0, 8.0])
    assert m.higher_is_better is False
    assert 2.0 - 1e-9 <= m.ci_low <= m.value <= m.ci_high <= 8.0 + 1e-9
    with pytest.raises(TuneloopError, match="no tokens"):
        M.perplexity_metric([1.0, 0.0], [3, 0])


def test_length_stats():
    s = M.length_stats([4, 0, 10, 2], ["one two three", "", "a b c d e f g h", "  "])
    assert s["tokens_mean"] == 4.0 and s["tokens_max"] == 10 and s["tokens_median"] == 3.0
    assert s["words_mean"] == pytest.approx(11 / 4) and s["words_max"] == 8
    assert s["empty_share"] == 0.5


# ---- bootstrap -------------------------------------------------------------------------------------------------


def toy_generation(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "dog", "sat", "ran", "on", "mat", "a", "big", "small", "red", "house", "tree"]
    refs = [" ".join(rng.choice(words, 8)) for _ in range(n)]
    preds = [" ".join(w if rng.random() < 0.7 else rng.choice(words) for w in r.split()) for r in refs]
    return preds, [[r] for r in refs]


def test_ci_contains_the_point_estimate_for_every_metric():
    preds, refs = toy_generation(120)
    names = [m for m in M.GENERATION_METRICS if m != "similarity"]
    rewards = list(np.random.default_rng(1).normal(size=len(preds)))
    values = list(M.generation_metrics(preds, refs, names, resamples=300, reward_scores=rewards).values())
    cls, _ = M.classification_metrics(Y_TRUE * 10, Y_PRED * 10, LABELS, None, resamples=300)
    values += [*cls.values(), M.perplexity_metric(list(np.linspace(5, 50, 40)), [10] * 40, resamples=300)]
    for m in values:
        assert m.ci_low <= m.value <= m.ci_high, m.name
        assert m.ci_low < m.ci_high, m.name


def test_ci_shrinks_with_more_data():
    def width(n):
        m = M.generation_metrics(*toy_generation(n), ["bleu", "token_f1"], resamples=300)
        return [m[k].ci_high - m[k].ci_low for k in ("bleu", "token_f1")]

    small, large = width(30), width(600)
    assert all(lg < s / 2 for lg, s in zip(large, small, strict=True))


def test_single_example_has_a_zero_width_ci():
    m = M.generation_metrics(*CASES["single_example"], ["bleu", "rougeL"], resamples=50)
    assert all(v.ci_low == v.value == v.ci_high for v in m.values())


def test_resamples_are_drawn_in_chunks_for_large_n(monkeypatch):
    monkeypatch.setattr(B, "_CELLS_PER_CHUNK", 64)
    stats = np.column_stack([np.arange(50.0), np.ones(50)])
    scores = B.bootstrap_scores(stats, M.score_fn("accuracy"), resamples=7, seed=1)
    assert scores.shape == (7,) and np.all((scores >= 0) & (scores <= 49))


def test_paired_bootstrap_of_a_system_against_itself():
    preds, refs = toy_generation(80)
    for name, m in M.generation_metrics(preds, refs, ["bleu", "chrf", "rougeL"], resamples=10).items():
        r = M.paired_bootstrap(m.stats, m.stats, M.score_fn(name), resamples=200)
        assert r["diff"] == 0.0 and r["ci"] == [0.0, 0.0] and r["a"] == r["b"] == m.value
        assert r["p_value"] == 1.0  # B is never better than itself


def test_paired_bootstrap_detects_a_clearly_better_system():
    preds, refs = toy_generation(150)
    good = M.generation_metrics([r[0] for r in refs[:100]] + preds[100:], refs, ["bleu", "token_f1"], resamples=10)
    base = M.generation_metrics(preds, refs, ["bleu", "token_f1"], resamples=10)
    for name in ("bleu", "token_f1"):
        r = M.paired_bootstrap(base[name].stats, good[name].stats, M.score_fn(name), resamples=500)
        assert r["diff"] > 0 and r["ci"][0] > 0 and r["p_value"] < 0.05
        back = M.paired_bootstrap(good[name].stats, base[name].stats, M.score_fn(name), resamples=500)
        assert back["p_value"] > 0.95


def test_paired_bootstrap_follows_lower_is_better_for_perplexity():
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 30, 100)
    worse = M.perplexity_metric(list(tokens * 3.0 + rng.random(100)), list(tokens), resamples=10)
    better = M.perplexity_metric(list(tokens * 2.0 + rng.random(100)), list(tokens), resamples=10)
    r = M.paired_bootstrap(worse.stats, better.stats, M.score_fn("perplexity"), resamples=300)
    assert r["diff"] < 0 and r["p_value"] < 0.05  # the score function says lower is better
    explicit = M.paired_bootstrap(worse.stats, better.stats, M.score_fn("perplexity"), 300, higher_is_better=True)
    assert explicit["p_value"] > 0.95


def test_paired_bootstrap_compares_roc_auc_by_name():
    rng = np.random.default_rng(1)
    y = list(rng.choice(["no", "yes"], 200))
    sharp = np.array([[0.1, 0.9] if t == "yes" else [0.9, 0.1] for t in y])
    noisy = rng.dirichlet([1, 1], 200)
    a, _ = M.classification_metrics(y, y, ["no", "yes"], noisy, ["roc_auc"], resamples=10)
    b, _ = M.classification_metrics(y, y, ["no", "yes"], sharp, ["roc_auc"], resamples=10)
    r = M.paired_bootstrap(a["roc_auc"].stats, b["roc_auc"].stats, M.score_fn("roc_auc"), resamples=200)
    assert r["b"] == pytest.approx(100.0) and r["p_value"] < 0.05


# ---- evaluate:<name> -------------------------------------------------------------------------------------------


def test_evaluate_metric_offline_names_the_metric_and_suggests_the_builtin(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(var, "1")

    def no_network(self, *args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)  # whatever evaluate tries, nothing can hang
    import evaluate  # a core dependency: a missing one is a failure, not a skip
    import huggingface_hub.constants

    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)  # in case it was imported before the env
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TuneloopError) as err:
        M.evaluate_metric("evaluate:bleu", ["a b c"], [["a b c"]])
    msg = str(err.value)
    assert msg.startswith(
        "metric evaluate:bleu needs the Hugging Face hub to download its script (evaluate.load failed:"
    )
    assert "use the built-in `bleu` (sacrebleu)" in msg


def test_evaluate_metric_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "evaluate", None)
    with pytest.raises(TuneloopError, match=r"evaluate:rouge needs the `evaluate` package.*`rougeL`"):
        M.evaluate_metric("rouge", ["a"], ["a"])
