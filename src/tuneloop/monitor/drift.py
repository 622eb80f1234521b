"""Drift between a reference sample and a window of served traffic.

Embedding drift is Evidently's "model" method: a classifier learns to tell reference prompts from window prompts
on their all-MiniLM-L6-v2 embeddings; if it can (ROC-AUC on held-out rows above 0.55), the window differs. A small
window lets a classifier look lucky, so the AUC must also be significantly above chance (its null distribution is
the Mann–Whitney U's, normal with sd sqrt((n1+n2+1)/(12·n1·n2))), as Evidently compares small samples with the
AUCs of a random classifier. Descriptors are tested one by one with the tests
Evidently picks for their kind: Kolmogorov–Smirnov for lengths, chi-squared for the language mix, Fisher's exact
test for refusal and empty-answer rates.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneloop.data.prepare import detect_languages
from tuneloop.eval.metrics import embedder

REFUSAL = re.compile(
    r"^\s*(i'?m sorry|sorry,|i am sorry|i can(?:no|')t|i cannot|i am unable|i'?m unable|i won'?t|as an ai\b|"
    r"i'?m not able|i am not able|unfortunately,? i)",
    re.IGNORECASE,
)
LANGUAGE_SAMPLE = 500  # texts per side whose language is detected (lingua is the slow part of a check)
REFERENCE_RATIO = 4  # reference rows per window row in the classifier
EXAMPLES = 5  # window prompts the classifier found most unlike the reference, shown in the report


@dataclass
class Texts:
    """One side of a comparison: prompts (the last user turn) and, where known, the answers."""

    prompts: list[str]
    outputs: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def last_user_turn(prompt: Any) -> str:
    """The text a drift check reads from a prompt: a chat's last user turn (the system prompt and the task's
    instruction are the same for every request, so only what the user sent can drift), or a completion prompt."""
    if isinstance(prompt, str):
        return prompt
    users = [t.get("content", "") for t in prompt or [] if isinstance(t, dict) and t.get("role") == "user"]
    return users[-1] if users else ""


def embed(texts: list[str], model: Any = None) -> np.ndarray:

    model = model if model is not None else embedder()
    emb = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False, batch_size=64)
    return np.asarray(emb, dtype=np.float32)


def null_sd(n1: int, n2: int) -> float:
    """Standard deviation of the ROC-AUC of an uninformative score (Mann–Whitney U / n1·n2)."""
    return math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))


def embedding_drift(
    reference: np.ndarray, window: np.ndarray, threshold: float, p_value: float, seed: int = 0
) -> dict[str, Any]:
    """Domain-classifier drift, as Evidently computes it: half of the rows train a logistic regression (classes
    weighted, so a large reference does not drown the window), the other half score it. The reference is sampled
    to at most REFERENCE_RATIO times the window. Returns the ROC-AUC, its one-sided p-value against chance (the
    held-out half makes the Mann–Whitney null exact; cross-validated AUCs were measured to spread far wider than it
    and raised 10–15% false alarms), the verdict, and the window rows' scores (how unlike the reference they look)."""
    from scipy.stats import norm
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    if len(reference) > REFERENCE_RATIO * len(window):
        reference = reference[rng.choice(len(reference), size=REFERENCE_RATIO * len(window), replace=False)]
    x = np.concatenate([reference, window])
    y = np.concatenate([np.zeros(len(reference), dtype=int), np.ones(len(window), dtype=int)])
    rows = np.arange(len(y))
    train, test = train_test_split(rows, test_size=0.5, stratify=y, random_state=seed)
    model = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x[train], y[train])
    scores = model.predict_proba(x)[:, 1]
    auc = float(roc_auc_score(y[test], scores[test]))
    n_ref, n_win = int((y[test] == 0).sum()), int((y[test] == 1).sum())
    p = float(norm.sf((auc - 0.5) / null_sd(n_ref, n_win)))
    return {
        "test": "domain classifier (logistic regression, half held out) on all-MiniLM-L6-v2 embeddings",
        "roc_auc": auc,
        "threshold": threshold,
        "p_value": p,
        "significance": p_value,
        "reference_rows": len(reference),
        "window_rows": len(window),
        "drift": bool(auc > threshold and p < p_value),
        "window_scores": scores[len(reference) :].tolist(),
    }


def _ks(reference: list[float], window: list[float]) -> tuple[float, float]:
    from scipy.stats import ks_2samp

    result = ks_2samp(reference, window)
    return float(result.statistic), float(result.pvalue)


def _rate_test(ref_hits: int, ref_n: int, win_hits: int, win_n: int) -> float:
    from scipy.stats import fisher_exact

    return float(fisher_exact([[ref_hits, ref_n - ref_hits], [win_hits, win_n - win_hits]]).pvalue)


def _languages(side: Texts, seed: int) -> Counter:
    """Language counts of (a sample of) the prompts; `meta["languages"]` holds them when already detected."""

    if "languages" in side.meta:
        return Counter(lang or "unknown" for lang in side.meta["languages"])
    texts = side.prompts
    rng = np.random.default_rng(seed)
    if len(texts) > LANGUAGE_SAMPLE:
        texts = [texts[i] for i in rng.choice(len(texts), size=LANGUAGE_SAMPLE, replace=False)]
    return Counter(lang or "unknown" for lang in detect_languages(texts))


def _language_test(ref: Counter, win: Counter) -> float:
    from scipy.stats import chi2_contingency

    names = sorted(set(ref) | set(win))
    if len(names) < 2:
        return 1.0
    table = np.array([[ref[n] for n in names], [win[n] for n in names]])
    return float(chi2_contingency(table).pvalue)


def words(text: str) -> int:
    return len(text.split())


def descriptor_drift(reference: Texts, window: Texts, names: list[str], p_value: float, seed: int = 0) -> list[dict]:
    """One row per descriptor: the reference and window summaries, the test, its p-value and the verdict. Output
    descriptors are skipped (and say why) when either side has no answers."""
    rows: list[dict[str, Any]] = []
    for name in names:
        row: dict[str, Any] = {"descriptor": name}
        if name == "prompt_length":
            ref = [words(t) for t in reference.prompts]
            win = [words(t) for t in window.prompts]
            stat, p = _ks(ref, win)
            row.update(
                test="Kolmogorov–Smirnov",
                statistic=stat,
                reference=float(np.median(ref)),
                window=float(np.median(win)),
                summary="median words",
            )
        elif name == "language":
            ref_c, win_c = _languages(reference, seed), _languages(window, seed)
            p = _language_test(ref_c, win_c)
            row.update(
                test="chi-squared",
                reference=dict(ref_c.most_common(5)),
                window=dict(win_c.most_common(5)),
                summary="languages detected (lingua)",
            )
        elif reference.outputs is None or window.outputs is None:
            rows.append({**row, "skipped": "the reference has no answers to compare with"})
            continue
        elif name == "output_length":
            ref = [words(t) for t in reference.outputs]
            win = [words(t) for t in window.outputs]
            stat, p = _ks(ref, win)
            row.update(
                test="Kolmogorov–Smirnov",
                statistic=stat,
                reference=float(np.median(ref)),
                window=float(np.median(win)),
                summary="median words",
            )
        else:
            hit = (lambda t: bool(REFUSAL.match(t))) if name == "refusal_rate" else (lambda t: not t.strip())
            ref_hits = sum(map(hit, reference.outputs))
            win_hits = sum(map(hit, window.outputs))
            p = _rate_test(ref_hits, len(reference.outputs), win_hits, len(window.outputs))
            row.update(
                test="Fisher's exact",
                reference=ref_hits / max(1, len(reference.outputs)),
                window=win_hits / max(1, len(window.outputs)),
                summary="share of answers",
            )
        rows.append({**row, "p_value": p, "drift": bool(p < p_value)})
    return rows


def verdict(embedding: dict[str, Any] | None, descriptors: list[dict], share: float) -> dict[str, Any]:
    """The check's drift decision: embedding drift, or at least `share` of the tested descriptors drifted."""
    tested = [d for d in descriptors if "drift" in d]
    drifted = [d["descriptor"] for d in tested if d["drift"]]
    by_descriptors = bool(tested) and len(drifted) / len(tested) >= share
    reasons = []
    if embedding is not None and embedding["drift"]:
        reasons.append(f"embedding drift (ROC-AUC {embedding['roc_auc']:.3f} > {embedding['threshold']})")
    if by_descriptors:
        reasons.append(f"{len(drifted)} of {len(tested)} descriptors drifted ({', '.join(drifted)})")
    return {"drift": bool(reasons), "reasons": reasons, "drifted_descriptors": drifted}
