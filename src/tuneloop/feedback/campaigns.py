"""Create a campaign (prompts → every model's answers, generated ahead of time → gold items shuffled in → stored)
and report on it (progress, agreement, ranking, position bias, rater reliability)."""

from __future__ import annotations

import getpass
import math
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop.config.evaluation import EvalTask
from tuneloop.config.feedback import Campaign
from tuneloop.data.prepare import prepare_rows
from tuneloop.data.sources import fingerprint, row_text
from tuneloop.errors import TuneloopError
from tuneloop.eval.runner import ModelSpec, open_engine
from tuneloop.eval.tasks import load_task
from tuneloop.feedback import stats, store
from tuneloop.serve import traffic

GOLD_REFERENCE = "gold:reference"
GOLD_DECOY = "gold:decoy"


def guidelines_text(campaign: Campaign, base_dir: Path) -> str:
    text = campaign.guidelines
    if text.endswith(".md") and "\n" not in text:
        path = Path(text) if Path(text).is_absolute() else base_dir / text
        return path.read_text()
    return text


def create(campaign: Campaign, path: Path, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate every model's answer to every prompt (batched, through the evaluation backends, so raters never
    wait on a model), add gold items, and store it all in one transaction."""

    base_dir = path.parent
    guidelines = guidelines_text(campaign, base_dir)
    prompts, references, sources, logged = (
        _dataset_prompts(campaign, base_dir, say) if campaign.data else _traffic_prompts(campaign, base_dir, say)
    )
    answers: dict[str, list[dict[str, Any]]] = {}
    for model in campaign.models:
        if model.logged:
            answers[model.name] = [
                {
                    "model": model.name,
                    "model_ref": f"request-log#{r.model}",
                    "model_version": r.version,
                    "text": r.output,
                    "tokens": None,
                    "correct": None,
                }
                for r in logged
            ]
            say(f"{model.name}: {len(logged)} answers from the request log")
            continue
        spec = ModelSpec(model.name, model.model or model.served_model or "served", model.endpoint)
        engine, _, info = open_engine(spec, "transformers", base_dir, say)
        got = engine.generate(prompts, campaign.generation)
        version = (info.get("weights_sha256") or "")[:16] or model.served_model
        answers[model.name] = [
            {
                "model": model.name,
                "model_ref": spec.ref if not model.endpoint else f"{model.endpoint}#{spec.ref}",
                "model_version": version,
                "text": a.text,
                "tokens": a.tokens,
                "correct": None,
            }
            for a in got
        ]
        say(f"{model.name}: {len(got)} answers, {sum(a.tokens for a in got)} tokens")
    items = [
        {
            "prompt": prompt,
            "reference": references[i],
            "source": sources[i],
            "gold": False,
            "responses": [answers[m.name][i] for m in campaign.models],
        }
        for i, prompt in enumerate(prompts)
    ]
    items = _with_gold(items, campaign)
    spec = campaign.model_dump(mode="json")
    count = store.save_campaign(spec, guidelines, getpass.getuser(), items)
    gold = sum(1 for it in items if it["gold"])
    say(f"campaign {campaign.name}: {count} items ({gold} gold), {campaign.overlap} raters per item")
    return {"items": count, "gold_items": gold}


Prompts = tuple[list[Any], list[str | None], list[dict[str, Any]], list[Any]]


def _dataset_prompts(campaign: Campaign, base_dir: Path, say: Callable[[str], None]) -> Prompts:

    assert campaign.data is not None
    task = EvalTask(name="prompts", data=campaign.data, split=campaign.split, max_rows=campaign.max_items)
    rows = load_task(task, None, base_dir)
    fingerprint = rows.data["fingerprint"]
    say(f"{len(rows.prompts)} prompts from {campaign.data.source} ({campaign.split}), fingerprint {fingerprint}")
    references = [r[0] if r else None for r in rows.references] if rows.references else [None] * len(rows.prompts)
    sources = [
        {
            "data": str(campaign.data.source),
            "task": campaign.data.task,
            "split": campaign.split,
            "row": i,
            "fingerprint": fingerprint,
        }
        for i in range(len(rows.prompts))
    ]
    return rows.prompts, references, sources, []


def _traffic_prompts(campaign: Campaign, base_dir: Path, say: Callable[[str], None]) -> Prompts:
    """Prompts users sent to the endpoint: read from the request log, run through the campaign's data steps
    (exact repeats dropped by default), then a seeded sample. Each item keeps the request it came from."""
    from datasets import Dataset

    from tuneloop import db

    req = campaign.requests
    assert req is not None
    logged, skipped = traffic.read(req.model, req.since, req.until, req.endpoints)
    window = f"since {req.since}" if req.since else "all time"
    what = f"{len(logged)} logged requests" + (f" for {req.model!r}" if req.model else "") + f", {window}"
    if skipped:
        what += " (passed over: " + ", ".join(f"{n} {why}" for why, n in skipped.items()) + ")"
    say(f"{what}, from {db.shown_url()}")
    if not logged:
        raise TuneloopError(
            f"no usable requests in the log: {what}; widen `requests.since`, check "
            "`requests.model`, or serve with the request log on (not --no-request-log)"
        )
    texts = [row_text({"prompt": r.prompt}, ["prompt"]) for r in logged]  # chat: the user turns
    ds = Dataset.from_dict({"text": texts, "log_row": list(range(len(logged)))})
    if req.prepare:
        ds, _ = prepare_rows(req.prepare, ds, base_dir, say)
    keep = list(ds["log_row"])
    if len(keep) > req.sample:
        keep = sorted(random.Random(campaign.seed).sample(keep, req.sample))
    if campaign.max_items:
        keep = keep[: campaign.max_items]
    chosen = [logged[i] for i in keep]
    fp = fingerprint(Dataset.from_dict({"request_id": [r.request_id for r in chosen]}))
    say(f"{len(chosen)} prompts sampled (seed {campaign.seed}), fingerprint {fp}")
    sources = [
        {
            "requests": {
                "id": r.id,
                "request_id": r.request_id,
                "ts": r.ts.isoformat(),
                "endpoint": r.endpoint,
                "model": r.model,
                "version": r.version,
            },
            "fingerprint": fp,
        }
        for r in chosen
    ]
    return [r.prompt for r in chosen], [None] * len(chosen), sources, chosen


def _with_gold(items: list[dict[str, Any]], campaign: Campaign) -> list[dict[str, Any]]:
    """Gold items: a prompt's reference against another prompt's reference, which a careful rater can always tell
    apart; shuffled into the queue (seeded) so a rater cannot spot them by position."""
    with_ref = [it for it in items if it["reference"]]
    n_gold = math.ceil(campaign.gold_share * len(items)) if len(with_ref) >= 2 else 0
    rng = random.Random(campaign.seed)
    gold = []
    for it in rng.sample(with_ref, min(n_gold, len(with_ref))):
        decoys = [o["reference"] for o in with_ref if o["reference"] != it["reference"]]
        if not decoys:
            continue
        gold.append(
            {
                "prompt": it["prompt"],
                "reference": it["reference"],
                "source": {**it["source"], "gold": True},
                "gold": True,
                "responses": [
                    {
                        "model": GOLD_REFERENCE,
                        "model_ref": "reference",
                        "model_version": None,
                        "text": it["reference"],
                        "tokens": None,
                        "correct": True,
                    },
                    {
                        "model": GOLD_DECOY,
                        "model_ref": "another prompt's reference",
                        "model_version": None,
                        "text": rng.choice(decoys),
                        "tokens": None,
                        "correct": False,
                    },
                ],
            }
        )
    out = list(items)
    for g in gold:
        out.insert(rng.randrange(len(out) + 1), g)
    return out


def gold_results(name: str) -> dict[str, list[bool]]:
    """Each rater's gold answers: True when they preferred the reference."""
    found = store.item_rows(name)
    out: dict[str, list[bool]] = defaultdict(list)
    for v in store.all_votes(name):
        if v["task"] != "pairwise" or not v["gold"]:
            continue
        winner = v["value"]["winner"]
        correct = winner is not None and found[v["item_id"]]["responses"][winner]["correct"] is True
        out[v["rater"]].append(correct)
    return dict(out)


def flagged(name: str) -> dict[str, dict[str, Any]]:
    spec = store.campaign(name)["spec"]
    return stats.flag_raters(gold_results(name), spec["gold_threshold"], spec["gold_min_items"])


def report(name: str, resamples: int = 1000) -> dict[str, Any]:
    """Progress plus the statistics: agreement (Krippendorff's alpha per question, Cohen's kappa per rater
    pair), Bradley–Terry ranking with CIs, position bias, gold reliability and flagged raters. Flagged raters'
    votes are left out of the statistics, as they are out of exports."""
    out = store.status(name)
    found = store.item_rows(name)
    gold = flagged(name)
    out["excluded_raters"] = sorted(r for r, f in gold.items() if f["flagged"])
    votes = [v for v in store.all_votes(name) if not v["gold"] and v["rater"] not in out["excluded_raters"]]
    pairwise = [v for v in votes if v["task"] == "pairwise"]
    model_of = {rid: r["model"] for it in found.values() for rid, r in it["responses"].items()}
    models = sorted({m for m in model_of.values() if not m.startswith("gold:")})
    if pairwise:
        nominal: dict[Any, dict[str, Any]] = defaultdict(dict)
        comparisons: list[tuple] = []
        left_wins = decided = 0
        for v in pairwise:
            val = v["value"]
            a, b = model_of[val["left"]], model_of[val["right"]]
            # what agreement compares: which *model* won (sides differ between raters), or tie / both bad
            nominal[v["item_id"]][v["rater"]] = model_of[val["winner"]] if val["winner"] else val["choice"]
            if val["choice"] in ("left", "right"):
                decided += 1
                left_wins += val["choice"] == "left"
                loser = b if val["choice"] == "left" else a
                comparisons.append((model_of[val["winner"]], loser))
            elif val["choice"] == "tie":
                comparisons.append((a, b, "tie"))
        out["agreement"] = {"pairwise": stats.krippendorff_alpha(nominal, "nominal", resamples).as_dict()}
        # raw agreement beside alpha: when nearly every vote goes one way, alpha sits near 0 however often raters
        # agree (chance agreement is then high too), and readers need both numbers to see that
        pairs = [(a, b) for r in nominal.values() for i, a in enumerate(r.values()) for b in list(r.values())[i + 1 :]]
        out["agreement"]["pairwise"]["observed"] = sum(a == b for a, b in pairs) / len(pairs) if pairs else None
        out["kappa"] = stats.cohen_kappa_pairs(nominal)
        out["position_bias"] = stats.position_bias(left_wins, decided).as_dict()
        if comparisons and len(models) >= 2:
            out["ranking"] = stats.bradley_terry(comparisons, models, resamples=resamples)
    ratings = [v for v in votes if v["task"] == "rating"]
    if ratings:
        per_question: dict[str, dict[Any, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
        for v in ratings:
            for q, score in v["value"]["ratings"].items():
                per_question[q][v["value"]["response"]][v["rater"]] = score
        out.setdefault("agreement", {}).update(
            {
                f"rating/{q}": stats.krippendorff_alpha(r, "ordinal", resamples).as_dict()
                for q, r in per_question.items()
            }
        )
    out["raters_gold"] = {r: {**f, "accuracy": f["accuracy"].as_dict()} for r, f in gold.items()}
    return out
