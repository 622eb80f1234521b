"""Votes → training data in TRL's conversational formats, each row traceable to the votes behind it.

- `dpo` / `reward`: one pair per pairwise item whose votes have a majority winner (`prompt`, `chosen`,
  `rejected`); ties and both-bad majorities give no pair (`export.both_bad: rewrite` pairs a rewrite against
  both answers instead).
- `kto`: one row per rated answer whose mean score on the KTO question is at or above `desirable_at` (label true)
  or at or below `undesirable_at` (false); without ratings, pairwise winners are desirable and losers not.
- `sft`: one row per rewrite (`prompt`, `completion`).

Votes of raters flagged on gold items are left out unless `export.include_flagged`; gold items are never
exported. Every row carries `item_id`, `vote_ids`, `raters`, `agreement` (share of the item's votes that agree
with the outcome) and `campaign`. The directory holds `train.jsonl` (a recipe's `data: {source: DIR}`), the same
rows as a Hugging Face dataset (`dataset/`), and `export.yaml` with the fingerprint, counts and rules.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml

from tuneloop.data.sources import fingerprint
from tuneloop.errors import TuneloopError
from tuneloop.feedback import campaigns, store

FORMATS = ("dpo", "reward", "kto", "sft")


def export(name: str, fmt: str, out: Path, include_flagged: bool | None = None) -> dict[str, Any]:
    if fmt not in FORMATS:
        raise TuneloopError(f"export format {fmt!r}: use one of {', '.join(FORMATS)}")
    info = store.campaign(name)
    rules = info["spec"]["export"]
    keep_flagged = rules["include_flagged"] if include_flagged is None else include_flagged
    flagged = sorted(r for r, f in campaigns.flagged(name).items() if f["flagged"])
    excluded = [] if keep_flagged else flagged
    found = store.item_rows(name)
    votes = [v for v in store.all_votes(name) if not v["gold"] and v["rater"] not in excluded]
    by_item: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for v in votes:
        by_item[v["item_id"]][v["task"]].append(v)
    rows: list[dict[str, Any]] = []
    for item_id in sorted(by_item):
        item, tasks = found[item_id], by_item[item_id]
        if fmt in ("dpo", "reward"):
            rows += _pairs(item, tasks, rules)
        elif fmt == "kto":
            rows += _kto(item, tasks, rules)
        else:
            rows += _rewrites(item, tasks.get("rewrite", []))
    for row in rows:
        row["campaign"] = name
    if not rows:
        raise TuneloopError(
            f"campaign {name!r} has no votes that make {fmt} rows yet ({len(votes)} usable votes"
            + (f"; {len(flagged)} flagged raters excluded" if excluded else "")
            + "); nothing was written"
        )
    return _write(rows, out, name, fmt, rules, excluded, len(votes))


def _prompt(item: dict[str, Any]) -> Any:
    return item["prompt"] if isinstance(item["prompt"], list) else [{"role": "user", "content": item["prompt"]}]


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _provenance(item: dict[str, Any], used: list[dict], agreeing: int) -> dict[str, Any]:
    return {
        "item_id": item["id"],
        "vote_ids": [v["id"] for v in used],
        "raters": sorted({v["rater"] for v in used}),
        "agreement": agreeing / len(used) if used else None,
        "source_row": item["source"].get("row"),
        "request_id": (item["source"].get("requests") or {}).get("request_id"),  # served traffic: the request
    }


def _pairs(item: dict[str, Any], tasks: dict[str, list[dict]], rules: dict[str, Any]) -> list[dict[str, Any]]:
    pairwise = tasks.get("pairwise", [])
    if not pairwise:
        return []
    outcome = Counter(v["value"]["winner"] if v["value"]["winner"] else v["value"]["choice"] for v in pairwise)
    (top, n_top), *rest = outcome.most_common()
    if rest and rest[0][1] == n_top:  # no majority
        return []
    responses = item["responses"]
    if top == "both_bad" and rules["both_bad"] == "rewrite" and tasks.get("rewrite"):
        better = tasks["rewrite"][0]["value"]["rewrite"]
        return [
            {
                "prompt": _prompt(item),
                "chosen": _answer(better),
                "rejected": _answer(r["text"]),
                "chosen_model": "rewrite",
                "rejected_model": r["model"],
                **_provenance(item, pairwise, n_top),
            }
            for r in responses.values()
        ]
    if top in ("tie", "both_bad"):
        return []
    # with more than two models each rater saw a random pair: the winner against what it was most often shown with
    against = Counter(
        v["value"]["right"] if v["value"]["left"] == top else v["value"]["left"]
        for v in pairwise
        if top in (v["value"]["left"], v["value"]["right"])
    )
    lost = against.most_common(1)[0][0]
    return [
        {
            "prompt": _prompt(item),
            "chosen": _answer(responses[top]["text"]),
            "rejected": _answer(responses[lost]["text"]),
            "chosen_model": responses[top]["model"],
            "rejected_model": responses[lost]["model"],
            **_provenance(item, pairwise, n_top),
        }
    ]


def _kto(item: dict[str, Any], tasks: dict[str, list[dict]], rules: dict[str, Any]) -> list[dict[str, Any]]:
    responses = item["responses"]
    ratings = tasks.get("rating", [])
    rows = []
    if ratings:
        question = rules["kto_question"] or next(iter(ratings[0]["value"]["ratings"]))
        per_response: dict[int, list[dict]] = defaultdict(list)
        for v in ratings:
            if question in v["value"]["ratings"]:
                per_response[v["value"]["response"]].append(v)
        for rid, used in per_response.items():
            scores = [v["value"]["ratings"][question] for v in used]
            mean = sum(scores) / len(scores)
            if rules["undesirable_at"] < mean < rules["desirable_at"]:
                continue
            label = mean >= rules["desirable_at"]
            agreeing = sum((s >= rules["desirable_at"]) == label for s in scores)
            rows.append(
                {
                    "prompt": _prompt(item),
                    "completion": _answer(responses[rid]["text"]),
                    "label": label,
                    "model": responses[rid]["model"],
                    "mean_rating": mean,
                    **_provenance(item, used, agreeing),
                }
            )
        return rows
    for pair in _pairs(item, tasks, {**rules, "both_bad": "drop"}):
        for key, label in (("chosen", True), ("rejected", False)):
            rows.append(
                {
                    "prompt": pair["prompt"],
                    "completion": pair[key],
                    "label": label,
                    "model": pair[f"{key}_model"],
                    **{k: pair[k] for k in ("item_id", "vote_ids", "raters", "agreement", "source_row", "request_id")},
                }
            )
    return rows


def _rewrites(item: dict[str, Any], rewrites: list[dict]) -> list[dict[str, Any]]:
    return [
        {
            "prompt": _prompt(item),
            "completion": _answer(v["value"]["rewrite"]),
            "rewritten_model": item["responses"][v["value"]["response"]]["model"],
            **_provenance(item, [v], 1),
        }
        for v in rewrites
    ]


def _write(
    rows: list[dict], out: Path, name: str, fmt: str, rules: dict, excluded: list[str], n_votes: int
) -> dict[str, Any]:
    from datasets import Dataset

    out.mkdir(parents=True, exist_ok=True)
    ds = Dataset.from_list(rows)
    with (out / "train.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    ds.save_to_disk(str(out / "dataset"))
    manifest = {
        "campaign": name,
        "format": fmt,
        "rows": len(rows),
        "votes_used": n_votes,
        "fingerprint": fingerprint(ds),
        "excluded_raters": excluded,
        "rules": rules,
        "columns": ds.column_names,
    }
    (out / "export.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return manifest
