"""How often the drift monitor sees a real shift, and how often it cries wolf, on the Debian data.

The champion is taken to be trained on libraries (a seeded half of the `libs` and `libdevel` packages); served
traffic is simulated by windows of prompts (package descriptions, as the synopsis task sends them) and answers
(the real synopses):
- same distribution: windows from the other half of the library packages (a detection here is a false alarm);
- shifted: windows from `games` and `science`, sections absent from training;
- half shifted: half the window from games/science, half from the held-out libraries.
Each window goes through the monitor's own tests (tuneloop.monitor.drift, the recipe defaults), repeated over many
seeded windows per size. Embeddings and languages are computed once per row, as the monitor would cache them.

    python scripts/bench_drift.py             # a few minutes on 2 CPU cores
    python scripts/bench_drift.py --windows 50 --sizes 100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "debian-descriptions"
LIBRARIES = ("libs", "libdevel")
SHIFTED = ("games", "science")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=100, help="windows per size and scenario")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch docs/")
    a = parser.parse_args()

    from tuneloop.config.monitor import Drift
    from tuneloop.data.prepare import detect_languages
    from tuneloop.monitor.drift import Texts, descriptor_drift, embed, embedding_drift, verdict

    rows = [json.loads(line) for split in ("train", "validation", "test") for line in (DATA / f"{split}.jsonl").open()]
    libraries = [r for r in rows if r["section"] in LIBRARIES]
    shifted = [r for r in rows if r["section"] in SHIFTED]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(libraries))
    half = len(libraries) // 2
    reference_rows = [libraries[i] for i in order[:half]]
    held_out = [libraries[i] for i in order[half:]]
    everything = reference_rows + held_out + shifted
    t0 = time.time()
    emb = embed([r["description"] for r in everything])
    languages = detect_languages([r["description"] for r in everything])
    print(f"{len(everything)} rows embedded and language-detected in {time.time() - t0:.0f} s")
    index = {id(r): i for i, r in enumerate(everything)}

    def side(chosen: list[dict]) -> tuple[np.ndarray, Texts]:
        ids = [index[id(r)] for r in chosen]
        texts = Texts(
            [r["description"] for r in chosen],
            [r["synopsis"] for r in chosen],
            {"languages": [languages[i] for i in ids]},
        )
        return emb[ids], texts

    defaults = Drift()
    ref_emb, ref_texts = side(reference_rows)
    scenarios = {
        "same distribution (false alarms)": 0.0,
        "half shifted to games/science": 0.5,
        "shifted to games/science": 1.0,
    }
    results = []
    t0 = time.time()
    for size in a.sizes:
        for label, share in scenarios.items():
            found, aucs, by_embedding, by_descriptors = 0, [], 0, 0
            for w in range(a.windows):
                pick = np.random.default_rng(1000 * size + w)
                n_shift = round(share * size)
                chosen = [shifted[i] for i in pick.choice(len(shifted), n_shift, replace=False)]
                chosen += [held_out[i] for i in pick.choice(len(held_out), size - n_shift, replace=False)]
                win_emb, win_texts = side(chosen)
                e = embedding_drift(ref_emb, win_emb, defaults.embedding_auc, defaults.embedding_p_value, seed=w)
                d = descriptor_drift(ref_texts, win_texts, list(defaults.descriptors), defaults.p_value, seed=w)
                v = verdict(e, d, defaults.share)
                found += v["drift"]
                by_embedding += e["drift"]
                by_descriptors += any("descriptors drifted" in r for r in v["reasons"])
                aucs.append(e["roc_auc"])
            results.append(
                {
                    "size": size,
                    "scenario": label,
                    "windows": a.windows,
                    "detected": found / a.windows,
                    "by_embedding": by_embedding / a.windows,
                    "by_descriptors": by_descriptors / a.windows,
                    "auc_median": float(np.median(aucs)),
                    "auc_p5": float(np.percentile(aucs, 5)),
                    "auc_p95": float(np.percentile(aucs, 95)),
                }
            )
            r = results[-1]
            print(
                f"window {size:4d}  {label:36s} drift in {r['detected']:.0%} of windows "
                f"(AUC median {r['auc_median']:.3f})"
            )
    wall = time.time() - t0
    lines = _markdown(results, len(reference_rows), len(held_out), len(shifted), a.windows, wall)
    print("\n".join(lines))
    if not a.no_write:
        (ROOT / "docs" / "bench").mkdir(exist_ok=True)
        (ROOT / "docs" / "bench" / "drift.json").write_text(json.dumps(results, indent=1) + "\n")
        _plot(results)
        with (ROOT / "docs" / "benchmarks.md").open("a") as f:
            f.write("\n" + "\n".join(lines) + "\n")


def _markdown(results: list[dict], n_ref: int, n_held: int, n_shift: int, windows: int, wall: float) -> list[str]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    lines = [
        f"### Drift monitor on the Debian data — {time.strftime('%Y-%m-%d')} (commit {commit.stdout.strip()})",
        "",
        f"Reference: {n_ref} library packages (`libs`, `libdevel`); windows of served prompts drawn from {n_held} "
        f"other library packages and {n_shift} `games`/`science` packages; {windows} seeded windows per row; "
        f"the monitor's default tests (embedding ROC-AUC > 0.55 and p < 0.01, or half the descriptors at p < 0.05); "
        f"{wall:.0f} s (`scripts/bench_drift.py`).",
        "",
        "| window | traffic | drift found | by embedding | by descriptors | ROC-AUC median (5–95%) |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for r in results:
        spread = f"{r['auc_median']:.3f} ({r['auc_p5']:.3f}–{r['auc_p95']:.3f})"
        lines.append(
            f"| {r['size']} | {r['scenario']} | **{r['detected']:.0%}** | {r['by_embedding']:.0%} | "
            f"{r['by_descriptors']:.0%} | {spread} |"
        )
    return lines


def _plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label in dict.fromkeys(r["scenario"] for r in results):
        rs = [r for r in results if r["scenario"] == label]
        ax.plot([r["size"] for r in rs], [100 * r["detected"] for r in rs], marker="o", label=label)
    ax.axhline(90, color="grey", lw=0.8, ls="--")
    ax.axhline(5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("window (requests)")
    ax.set_ylabel("windows with drift found (%)")
    ax.set_ylim(-3, 103)
    ax.legend(fontsize=8)
    ax.set_title("Drift monitor on Debian traffic (libraries → games/science)", fontsize=10)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "img" / "drift-bench.png", dpi=120)


if __name__ == "__main__":
    main()
