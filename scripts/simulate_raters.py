"""Simulated raters voting through a running rater app's HTTP API, each with their own login.

    tuneloop feedback serve synopsis-v1 &
    python scripts/simulate_raters.py synopsis-v1 --url http://127.0.0.1:7860/ --raters 50 --votes 20 \
        --create-raters --prefer reference --noise 0.1

Accounts `sim-001` ... are created with `--create-raters` (password `sim-password-NNN`). Prints throughput and
vote latency (p50/p95/max) and, with --output, appends them to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("campaign")
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--raters", type=int, default=10)
    parser.add_argument("--votes", type=int, default=20, help="votes per rater")
    parser.add_argument("--prefer", choices=["reference", "rules", "left", "random"], default="reference")
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--create-raters", action="store_true")
    parser.add_argument("--output", type=Path, help="append the result to this markdown file")
    a = parser.parse_args()

    from tuneloop.errors import TuneloopError
    from tuneloop.feedback import store
    from tuneloop.feedback.simulate import prompt_facts, simulate

    accounts = [(f"sim-{i:03d}", f"sim-password-{i:03d}") for i in range(1, a.raters + 1)]
    if a.create_raters:
        for name, password in accounts:
            with contextlib.suppress(TuneloopError):  # exists from an earlier run
                store.add_rater(name, password)
    references, packages = prompt_facts(a.campaign)  # --prefer rules also checks the package-name rule
    result = simulate(
        a.url, accounts, a.votes, prefer=a.prefer, noise=a.noise, references=references, packages=packages, seed=a.seed
    )
    summary = result.summary()
    print(json.dumps(summary, indent=2))
    for e in result.errors[:10]:
        print("error:", e, file=sys.stderr)
    if a.output:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        with a.output.open("a") as f:
            f.write(
                f"\n### Rater app under load — {time.strftime('%Y-%m-%d')} (commit {commit.stdout.strip()})\n\n"
                f"{a.raters} simulated raters (own logins, `gradio_client`) × {a.votes} pairwise votes on "
                f"`{a.campaign}`: {summary['votes']} votes in {summary['wall_s']:.1f} s "
                f"({summary['votes_per_s']:.1f}/s), {summary['errors']} errors; vote latency p50 "
                f"{summary['latency_ms_p50']:.0f} ms, **p95 {summary['latency_ms_p95']:.0f} ms**, max "
                f"{summary['latency_ms_max']:.0f} ms.\n"
            )


if __name__ == "__main__":
    main()
