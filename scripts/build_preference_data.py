#!/usr/bin/env python3
"""Build the built-in ``debian-synopsis-pairs`` dataset: preference pairs for the synopsis task.

Every row is one package of ``debian-descriptions`` (same train/validation/test split, so the pairs never leak a
test package into training): ``chosen`` is the package's real synopsis, ``rejected`` is either

- ``generated``: what the built-in base model (SmolLM2-135M-Instruct, greedy, 32 new tokens) writes for the
  description with the synopsis task's own prompt — the model's typical mistakes (whole sentences, leading
  articles, full stops, run-on text), which is what DPO and a reward model should learn to push down; or
- ``hard_negative``: the real synopsis of another package in the same archive section, chosen by a seeded hash —
  fluent, rule-following, and wrong about this package.

Which one a row gets is decided by a hash of the package name (half and half). Pairs whose rejected text equals
the chosen one after normalisation, or overlaps it by ROUGE-L F >= 0.8, are dropped as not a preference (the
counts land in ``tasks.json``). Run::

    python scripts/build_preference_data.py            # ~15 min on 2 CPU cores (the generations)

The output is deterministic for a given model and torch build; ``tasks.json`` records the sha256 of each file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE = REPO_ROOT / "data" / "debian-descriptions"
DEFAULT_OUTPUT = REPO_ROOT / "data" / "debian-synopsis-pairs"
ROWS = {"train": 1200, "validation": 200, "test": 300}
MAX_OVERLAP = 0.8
SALT = "tuneloop-pairs:"


def share(key: str) -> float:
    return int(hashlib.sha256((SALT + key).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def hard_negative(row: dict, pool: list[dict]) -> str | None:
    """Synopsis of another package in the same section, the same one every build."""
    others = [r for r in pool if r["section"] == row["section"] and r["source"] != row["source"]]
    if not others:
        return None
    others.sort(key=lambda r: share(row["package"] + "|" + r["package"]))
    return others[0]["synopsis"]


def generate(rows: list[dict], batch_size: int) -> list[str]:
    from tuneloop.config.evaluation import Generation
    from tuneloop.config.schema import ModelRef
    from tuneloop.data import builtin
    from tuneloop.eval.backends import TransformersBackend
    from tuneloop.models.references import load_for_eval, resolve_model

    fmt = builtin.task("debian-descriptions", "synopsis").format
    model = resolve_model(ModelRef(name="smollm2-135m-instruct").name, REPO_ROOT, say=print)
    lm, tok = load_for_eval(model)
    backend = TransformersBackend(model.path, tok, lm)
    prompts = [
        [{"role": "system", "content": fmt.system}, {"role": "user", "content": fmt.prompt.format_map(r)}] for r in rows
    ]
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if done[0] % (batch_size * 10) < n or done[0] == len(rows):
            print(f"  generated {done[0]}/{len(rows)}", flush=True)

    answers = backend.generate(prompts, Generation(max_new_tokens=32, batch_size=batch_size), tick=tick)
    return [" ".join(a.text.split()) for a in answers]


def main() -> None:
    from rouge_score import rouge_scorer

    from tuneloop.data.dedup import normalise

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    args.output.mkdir(parents=True, exist_ok=True)
    info: dict = {
        "name": "debian-synopsis-pairs",
        "version": 1,
        "source": "debian-descriptions v2 (same splits) + generations of smollm2-135m-instruct",
        "splits": {},
        "columns": ["package", "section", "description", "chosen", "rejected", "rejected_kind"],
        "tasks": {
            "preference": {"kind": "preference", "input": "description"},
            "kto": {"kind": "unpaired", "input": "description"},
        },
        "dropped": {},
        "rejected_kind": {},
        "overlap": {},
        "sha256": {},
    }
    for split, n in ROWS.items():
        rows = [json.loads(line) for line in (SOURCE / f"{split}.jsonl").open()]
        pool = rows
        rows = sorted(rows, key=lambda r: share(r["package"]))[:n]  # a seeded sample, in hash order
        gen_rows = [r for r in rows if share("kind|" + r["package"]) < 0.5]
        print(f"{split}: generating {len(gen_rows)} rejected synopses with the base model", flush=True)
        generated = dict(zip((r["package"] for r in gen_rows), generate(gen_rows, args.batch_size), strict=True))
        out, dropped, overlaps = [], {"same_text": 0, "overlap": 0, "no_negative": 0, "empty": 0}, []
        kinds = {"generated": 0, "hard_negative": 0}
        for r in rows:
            kind = "generated" if r["package"] in generated else "hard_negative"
            rejected = generated[r["package"]] if kind == "generated" else hard_negative(r, pool)
            if rejected is None:
                dropped["no_negative"] += 1
                continue
            if not rejected.strip():
                dropped["empty"] += 1
                continue
            if normalise(rejected) == normalise(r["synopsis"]):
                dropped["same_text"] += 1
                continue
            f = scorer.score(r["synopsis"], rejected)["rougeL"].fmeasure
            if f >= MAX_OVERLAP:
                dropped["overlap"] += 1
                continue
            overlaps.append(f)
            kinds[kind] += 1
            out.append(
                {
                    "package": r["package"],
                    "section": r["section"],
                    "description": r["description"],
                    "chosen": r["synopsis"],
                    "rejected": rejected,
                    "rejected_kind": kind,
                }
            )
        path = args.output / f"{split}.jsonl"
        with path.open("w") as f:
            for row in out:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        info["splits"][split] = len(out)
        info["dropped"][split] = dropped
        info["rejected_kind"][split] = kinds
        overlaps.sort()
        info["overlap"][split] = {
            "rougeL_mean": round(sum(overlaps) / len(overlaps), 4),
            "rougeL_p90": round(overlaps[int(0.9 * (len(overlaps) - 1))], 4),
            "share_ge_0.5": round(sum(o >= 0.5 for o in overlaps) / len(overlaps), 4),
        }
        info["sha256"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{split}: {len(out)} pairs {kinds}, dropped {dropped}, overlap {info['overlap'][split]}", flush=True)
    (args.output / "tasks.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
