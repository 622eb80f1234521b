"""Run a suite on one or more models and write results.json, per-example files and the reports.

Order for each model: resolve → load once → for each task: generate (or score) → metrics with CIs → worst examples.
With several models, each later one is compared with the first by a paired bootstrap on the same rows.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.config.schema import ModelRef
from tuneloop.cost import Price, account, safetensors_params
from tuneloop.errors import TuneloopError
from tuneloop.eval import metrics as M
from tuneloop.eval.backends import EndpointBackend, Throughput, TransformersBackend, VllmBackend
from tuneloop.eval.bootstrap import paired_bootstrap
from tuneloop.eval.report import write_reports
from tuneloop.eval.tasks import TaskRows, parse_label
from tuneloop.models import references as evmodels
from tuneloop.models.loading import load_reward_model, resolve
from tuneloop.rundir import RESULTS

FORMAT = "tuneloop-eval/1"
WORST = 10


@dataclass
class ModelSpec:
    label: str  # "base", "fine-tuned", or the reference itself
    ref: str  # model reference, or the served model name with `endpoint`
    endpoint: str | None = None
    api_key: str | None = None  # for `endpoint`; None: OPENAI_API_KEY, else none


ENDPOINT_UNSCORABLE = ("perplexity", "preference")  # need log-probabilities of given text


@dataclass
class ModelRun:
    """One model's results plus the per-example statistics that paired comparisons resample."""

    entry: dict[str, Any]
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # "task/metric" -> (N, k)


def evaluate_model(
    spec: ModelSpec,
    tasks: list[TaskRows],
    *,
    backend: str,
    base_dir: Path,
    resamples: int,
    say: Callable[[str], None],
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    price: Price | None = None,
) -> ModelRun:

    started = time.perf_counter()
    entry: dict[str, Any] = {"label": spec.label, "ref": spec.ref, "backend": backend, "tasks": {}}
    if spec.endpoint:  # what an endpoint cannot score is skipped, and said so, before anything is generated
        reason = (
            "needs token log-probabilities, which an OpenAI-compatible endpoint does not return for a given text; "
            "score the checkpoint with --backend transformers"
        )
        for t in tasks:
            if t.kind in ENDPOINT_UNSCORABLE:
                say(f"skipped task {t.task.name} ({t.kind}): it {reason}")
                entry.setdefault("skipped", {})[t.task.name] = f"a {t.kind} task {reason}"
        tasks = [t for t in tasks if t.kind not in ENDPOINT_UNSCORABLE]
        if not tasks:
            raise TuneloopError(f"nothing in this suite can be scored through an endpoint: every task {reason}")
    engine, model, info = open_engine(spec, backend, base_dir, say)
    entry.update(info)
    params = info.get("parameters")
    run = ModelRun(entry)
    for t in tasks:
        if model is not None:
            evmodels.check_template(model, entry.get("chat_template_sha256"), t.fmt, t.task.name)
        tick = progress(f"{spec.label} · {t.task.name}", len(t.prompts)) if progress else None
        result, stats = _run_task(engine, t, resamples, tick, base_dir, say)
        served = result.get("serving")
        if served and price is not None:  # an endpoint's provider prices its own tokens: no rate of ours applies
            tokens = served["prompt_tokens"] + served["generated_tokens"]
            served["cost"] = account(price, served["wall_s"], 1, tokens, params, "inference")
            if served["generated_tokens"]:
                served["cost_per_1k_tokens"] = 1000 * served["cost"]["money"] / served["generated_tokens"]
        entry["tasks"][t.task.name] = result
        run.stats.update({f"{t.task.name}/{k}": v for k, v in stats.items()})
        shown = ", ".join(f"{k} {v['value']:.4g}" for k, v in result["metrics"].items())
        say(f"{spec.label} · {t.task.name}: {shown}")
    entry["wall_s"] = time.perf_counter() - started
    if price is not None:  # the whole evaluation of this model: loading, generation, scoring
        tokens = sum(
            (t.get("serving") or {}).get("prompt_tokens", 0) + (t.get("serving") or {}).get("generated_tokens", 0)
            for t in entry["tasks"].values()
        )
        entry["cost"] = account(price, entry["wall_s"], 1, tokens, params, "inference")
    return run


def open_engine(spec: ModelSpec, backend: str, base_dir: Path, say: Callable[[str], None]) -> tuple[Any, Any, dict]:
    """The generation engine for one model (an endpoint, vLLM, or transformers), the resolved checkpoint (None
    for an endpoint), and what identifies it: parameters, weights hash, training record, engine description."""

    info: dict[str, Any] = {}
    if spec.endpoint:
        engine: Any = EndpointBackend(spec.endpoint, None if spec.ref == "served" else spec.ref, spec.api_key)
        info["backend"] = "endpoint"
        info.update(engine.describe())
        return engine, None, info
    model = evmodels.resolve_model(spec.ref, base_dir, say=say)
    if backend == "vllm":
        engine = VllmBackend(evmodels.merged_dir(model), evmodels.load_tokenizer(model))
        params = safetensors_params(engine.path)
    else:
        lm, tokenizer = evmodels.load_for_eval(model)
        engine = TransformersBackend(model.path, tokenizer, lm)
        params = lm.num_parameters()
    info["parameters"] = params
    info["weights_sha256"] = evmodels.weights_sha256(model.path)
    info["trained"] = model.record
    info.update(engine.describe())
    return engine, model, info


def _generate(engine: Any, t: TaskRows, tick, result: dict[str, Any]) -> list[Any]:
    """The task's answers; records their serving figures and lengths in `result`."""
    served = Throughput()
    started = time.perf_counter()
    answers = engine.generate(t.prompts, t.task.generation, tick)
    served.wall_s = time.perf_counter() - started
    served.generated_tokens = sum(a.tokens for a in answers)
    if hasattr(engine, "count_tokens"):
        served.prompt_tokens = engine.count_tokens([engine.render(p) for p in t.prompts])
    else:
        served.prompt_tokens = sum(a.prompt_tokens for a in answers)
    result["serving"] = {
        "wall_s": served.wall_s,
        "generated_tokens": served.generated_tokens,
        "prompt_tokens": served.prompt_tokens,
        "tokens_per_s": served.generated_tokens / served.wall_s if served.wall_s else None,
        "cost_per_1k_tokens": None,  # the price table arrives with cost accounting
    }
    result["lengths"] = M.length_stats([a.tokens for a in answers], [a.text for a in answers])
    return answers


def _external_metric(name: str, predictions: list[str], references: list[Any]) -> dict[str, dict[str, Any]]:
    """An `evaluate:NAME` metric, computed by Hugging Face evaluate (no per-example statistics, so no CI)."""
    metric = name.split(":", 1)[1]
    return {
        f"{name}/{key}" if key != metric else name: {
            "value": value,
            "ci": None,
            "higher_is_better": True,
            "signature": "evaluate (no CI)",
        }
        for key, value in M.evaluate_metric(metric, predictions, references).items()
    }


def _run_task(
    engine: Any, t: TaskRows, resamples: int, tick, base_dir: Path = Path("."), say: Callable[[str], None] = print
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    result: dict[str, Any] = {"kind": t.kind, "rows": len(t.prompts), "data": t.data, "metrics": {}}
    builtin = [m for m in t.metrics if not m.startswith("evaluate:")]
    external = [m for m in t.metrics if m.startswith("evaluate:")]
    values: dict[str, Any] = {}
    predictions: list[str] = []
    if t.kind in ("generation", "classification"):
        answers = _generate(engine, t, tick, result)
        predictions = [a.text for a in answers]
    if t.kind == "generation":
        rewards = None
        if "reward_score" in builtin:
            rewards = reward_scores(t.task.reward_model, base_dir, t.prompts, predictions, say)
        values = M.generation_metrics(
            predictions, t.references, builtin, resamples=resamples, columns=t.columns, reward_scores=rewards
        )
    elif t.kind == "classification":
        y_true = [r[0] for r in t.references]
        y_pred = [parse_label(p, t.labels or []) for p in predictions]
        scores = None
        notes = []
        if "roc_auc" in builtin:
            if getattr(engine, "supports_loglik", False):
                scores = _label_probabilities(engine, t)
            else:
                notes.append("roc_auc needs label log-likelihoods, which this backend cannot give")
                builtin = [m for m in builtin if m != "roc_auc"]
        values, info = M.classification_metrics(y_true, y_pred, t.labels or [], scores, builtin, resamples=resamples)
        info["notes"] = [*info.get("notes", []), *notes]
        result["classification"] = info
    elif t.kind == "perplexity":
        pairs = [engine.render_answer(p, r[0]) for p, r in zip(t.prompts, t.references, strict=True)]
        scored = engine.loglik(pairs, tick=tick)
        values = {
            "perplexity": M.perplexity_metric([s[0] for s in scored], [s[1] for s in scored], resamples=resamples)
        }
    elif t.kind == "preference":  # references are [chosen, rejected]
        chosen = engine.loglik([engine.render_answer(p, r[0]) for p, r in zip(t.prompts, t.references, strict=True)])
        rejected = engine.loglik([engine.render_answer(p, r[1]) for p, r in zip(t.prompts, t.references, strict=True)])
        if tick:
            tick(len(t.prompts))
        values = {"preference_accuracy": M.preference_metric(chosen, rejected, resamples=resamples)}
    for name in external:
        result["metrics"].update(_external_metric(name, predictions, t.references))
    stats = {}
    worst: dict[str, list[dict[str, Any]]] = {}
    for name, mv in values.items():
        result["metrics"][name] = {
            "value": mv.value,
            "ci": [mv.ci_low, mv.ci_high],
            "higher_is_better": mv.higher_is_better,
            "signature": mv.signature,
        }
        stats[name] = mv.stats
        worst[name] = _worst(mv, t, predictions)
    result["worst"] = worst
    result["examples"] = [
        {"prompt": _prompt_text(p), "references": r, "prediction": predictions[i] if predictions else None}
        for i, (p, r) in enumerate(zip(t.prompts, t.references, strict=True))
    ]
    return result, stats


@functools.cache
def _reward_model(ref: str, base_dir: Path, say: Callable[[str], None]) -> tuple[Any, Any]:
    """Loaded once per evaluation: every model of a comparison is scored by the same reward model."""
    from transformers import AutoTokenizer

    source = resolve(ModelRef(name=ref), base_dir, log=say)
    say(f"reward model: {ref}")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return load_reward_model(source), tokenizer


def reward_scores(
    ref: str, base_dir: Path, prompts: list[Any], answers: list[str], say: Callable[[str], None], batch: int = 16
) -> list[float]:
    """The reward model's score of each answer after its prompt, rendered with the reward model's chat template
    (as TRL's RewardTrainer saw its pairs), in batches."""
    import torch

    model, tokenizer = _reward_model(ref, base_dir, say)
    texts = []
    for prompt, answer in zip(prompts, answers, strict=True):
        if isinstance(prompt, list) and tokenizer.chat_template:
            turns = [*prompt, {"role": "assistant", "content": answer}]
            texts.append(tokenizer.apply_chat_template(turns, tokenize=False))
        else:
            texts.append(_prompt_text(prompt) + answer)
    scores: list[float] = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], return_tensors="pt", padding=True, truncation=True, max_length=1024)
        with torch.inference_mode():
            scores += model(**enc).logits[:, 0].float().tolist()
    return scores


def _label_probabilities(engine: Any, t: TaskRows) -> np.ndarray:
    """Each label's probability from the model's length-normalised log-likelihood of answering with it."""
    labels = t.labels or []
    pairs = [engine.render_answer(p, label) for p in t.prompts for label in labels]
    scored = engine.loglik(pairs)
    mean_logp = np.array([-nll / max(n, 1) for nll, n in scored]).reshape(len(t.prompts), len(labels))
    z = mean_logp - mean_logp.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _worst(mv: Any, t: TaskRows, predictions: list[str]) -> list[dict[str, Any]]:
    scores = np.asarray(mv.per_example, dtype=float)
    if scores.size == 0:
        return []
    order = np.argsort(scores if mv.higher_is_better else -scores, kind="stable")[:WORST]
    return [
        {
            "index": int(i),
            "score": float(scores[i]),
            "prompt": _prompt_text(t.prompts[i]),
            "prediction": predictions[i] if predictions else None,
            "references": t.references[i],
        }
        for i in order
    ]


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(turn["content"] for turn in prompt if turn.get("role") == "user")


def compare(a: ModelRun, b: ModelRun, resamples: int) -> list[dict[str, Any]]:
    """Paired bootstrap of every metric both runs share, b against a, on the same rows."""
    out = []
    for key, stats_b in b.stats.items():
        stats_a = a.stats.get(key)
        if stats_a is None:
            continue
        task, metric = key.split("/", 1)
        fa = a.entry["tasks"][task]["data"].get("fingerprint")
        fb = b.entry["tasks"][task]["data"].get("fingerprint")
        if fa != fb or len(stats_a) != len(stats_b):
            raise TuneloopError(f"task {task}: the two results were computed on different rows ({fa} vs {fb})")
        hib = a.entry["tasks"][task]["metrics"][metric]["higher_is_better"]
        paired = paired_bootstrap(stats_a, stats_b, M.score_fn(metric), resamples=resamples, higher_is_better=hib)
        out.append(
            {
                "task": task,
                "metric": metric,
                "a": a.entry["label"],
                "b": b.entry["label"],
                "a_value": a.entry["tasks"][task]["metrics"][metric]["value"],
                "b_value": b.entry["tasks"][task]["metrics"][metric]["value"],
                "diff": paired["diff"],
                "ci": paired["ci"],
                "p_value": paired["p_value"],
                "higher_is_better": hib,
            }
        )
    return out


def write_results(
    out_dir: Path, suite: dict[str, Any], runs: list[ModelRun], comparisons: list[dict], gate: dict | None
) -> dict[str, Any]:
    """results.json (numbers, CIs, signatures, fingerprints), examples-<label>.jsonl, stats-<label>.npz, reports."""

    out_dir.mkdir(parents=True, exist_ok=True)
    models = []
    for run in runs:
        entry = dict(run.entry)
        label = entry["label"]
        tasks = {}
        with (out_dir / f"examples-{_slug(label)}.jsonl").open("w") as f:
            for name, task in entry["tasks"].items():
                task = dict(task)
                for i, ex in enumerate(task.pop("examples", [])):
                    f.write(json.dumps({"task": name, "index": i, **ex}, ensure_ascii=False) + "\n")
                tasks[name] = task
        entry["tasks"] = tasks
        entry["stats_file"] = f"stats-{_slug(label)}.npz"
        np.savez_compressed(out_dir / entry["stats_file"], **run.stats)
        models.append(entry)
    results = {
        "format": FORMAT,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "suite": suite,
        "models": models,
        "comparisons": comparisons,
    }
    if gate is not None:
        results["gate"] = gate
    text = json.dumps(finite(results), indent=2, ensure_ascii=False, default=_json, allow_nan=False)
    (out_dir / RESULTS).write_text(text)
    write_reports(results, out_dir)
    return results


def load_run(results_path: Path, label: str | None = None) -> ModelRun:
    """A model's results and statistics back from an evaluation directory (for `tuneloop eval --compare`)."""
    path = results_path / RESULTS if results_path.is_dir() else results_path
    if not path.is_file():
        raise TuneloopError(f"{results_path}: no results.json (give an evaluation output directory)")
    results = json.loads(path.read_text())
    if results.get("format") != FORMAT:
        raise TuneloopError(f"{path}: not a tuneloop evaluation result (format {results.get('format')!r})")
    entries = results["models"]
    entry = next((m for m in entries if m["label"] == label), None) if label else entries[-1]
    if entry is None:
        raise TuneloopError(f"{path}: no model labelled {label!r}; labels: {', '.join(m['label'] for m in entries)}")
    with np.load(path.parent / entry["stats_file"]) as npz:
        stats = {k: npz[k] for k in npz.files}
    return ModelRun(entry, stats)


def finite(value: Any) -> Any:
    """NaN/inf (an interval undefined on every resample) as null: strict JSON readers (browsers, jq) reject NaN."""
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label)[:60]


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value))
