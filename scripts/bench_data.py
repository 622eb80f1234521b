"""Rows/s of `tuneloop data inspect` and of near-duplicate removal on all ~61k Debian package descriptions.

    python scripts/bench_data.py [--pool FILE] [--no-write]

The pool is every package description that passes the built-in dataset's filters, before its exact
de-duplication (scripts/build_debian_dataset.py --pool; this script runs it when FILE is missing, which needs
`apt-get update -o Acquire::Languages=en`). Timed separately, each on the whole pool as one split:
MinHash signatures, near-duplicate clustering (LSH + union-find), the `dedup` step end to end (through
`tuneloop.data.prepare`, cache off), token counting with the built-in model's tokenizer (the chat template
applied), lingua language detection, and the whole `inspect` of the pool. A dated section goes to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=Path(tempfile.gettempdir()) / "debian-pool.jsonl")
    parser.add_argument("--output", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-write", action="store_true")
    a = parser.parse_args()

    import datasets
    from bench_train import machine

    from tuneloop.config.prepare import Dedup
    from tuneloop.config.schema import Data
    from tuneloop.data import dedup as dd
    from tuneloop.data.inspect import Target, inspect
    from tuneloop.data.prepare import detect_languages, load_tokenizer_for, run_step, token_lengths
    from tuneloop.data.sources import raw_splits

    datasets.disable_caching()  # a cached `map` from an earlier run would time a disk read, not the counting
    if not a.pool.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, str(REPO / "scripts/build_debian_dataset.py"), "--output", tmp, "--pool", str(a.pool)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
    data = Data(source=str(a.pool), format={"prompt": "{description}", "completion": "{synopsis}"}, eval_split=None)
    splits = raw_splits(data, REPO)
    ds = splits["train"]
    n = len(ds)
    texts = list(ds["description"])
    print(f"{n} descriptions from {a.pool}")
    rows = []
    sigs, t = timed(lambda: dd.signatures(texts))
    rows.append(("MinHash signatures (128 perm, word 3-grams)", t))
    clusters, t = timed(lambda: dd.near_clusters(texts, 0.8, sigs=sigs))
    rows.append(("near-duplicate clustering (LSH at 0.8 + union-find)", t))
    (_, report), t = timed(lambda: run_step(Dedup(step="dedup"), dict(splits), data, REPO))
    removed = report["splits"]["train"]["removed"]
    rows.append(("`dedup` step (exact + near, end to end)", t))
    tok = load_tokenizer_for("smollm2-135m-instruct", REPO)
    _, t = timed(lambda: token_lengths(ds, data, tok))
    rows.append(("token counting (chat template, `datasets.map`)", t))
    langs, t = timed(lambda: detect_languages(texts))
    rows.append(("language detection (lingua, all languages; `filter` runs it on every row)", t))
    target = Target(data, REPO, "smollm2-135m-instruct", 1024)
    report_all, t = timed(lambda: inspect(target, splits, say=lambda _m: None))
    rows.append(("`inspect` (all of the above; languages on a 5,000-row sample)", t))
    for label, t in rows:
        print(f"{label}: {t:.1f} s, {n / t:.0f} rows/s")
    dup = report_all["splits"]["train"]["duplicates"]
    english = sum(1 for x in langs if x == "en") / n
    if a.no_write:
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    lines = [
        f"\n### Data inspection and deduplication — {time.strftime('%Y-%m-%d')} (commit {commit.strip()})\n",
        f"Machine: {machine()}.  ",
        f"Command: `python scripts/bench_data.py`. Data: {n} Debian package descriptions (bookworm `main`, the "
        "built-in dataset's filters, before exact de-duplication), one split.\n",
        "| stage | seconds | rows/s |",
        "|---|---:|---:|",
        *[f"| {label} | {t:.1f} | **{n / t:,.0f}** |" for label, t in rows],
        "",
        f"Found: {dup['exact_rows']} exact duplicate rows ({100 * dup['exact_share']:.1f}%), {dup['near_rows']} rows "
        f"in near-duplicate clusters beyond their first ({100 * dup['near_share']:.1f}%, {len(clusters)} clusters); "
        f"the `dedup` step removed {json.dumps(removed)}; lingua labels {100 * english:.1f}% English.",
        "",
        "How to read: single process except token counting (`datasets.map(num_proc=...)` above 20k rows) and "
        "lingua (its own threads). MinHash hashing and LSH queries are pure Python loops inside datasketch, so "
        "near-dedup scales linearly at this rate on one core; past a few million rows use datatrove's MinHash "
        "pipeline (see docs/data.md).",
    ]
    with a.output.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
