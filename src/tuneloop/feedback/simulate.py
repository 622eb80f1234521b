"""Simulated raters voting through the rater app's real HTTP API (`gradio_client`, each with their own login):
the load test of the app, and the stand-in for people when the feedback loop runs unattended.

A simulated rater prefers the answer closer to the prompt's reference (ROUGE-L, `prefer="reference"`), the answer
that follows Debian's synopsis rules and is closer to the reference (`"rules"`: the preference the feedback-loop demo
gives its raters, so whether retraining learned it can be measured), always the left one (`"left"`, a position-biased
rater) or picks at random (`"random"`); with probability `noise` it picks at random whatever its preference.
`prompt_facts(campaign)` gives what such a rater knows of each prompt: its reference and, for the built-in Debian
descriptions, its package (a synopsis must not repeat the package's name).
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tuneloop.data import builtin
from tuneloop.rewards import follows_synopsis_rules

DONE = "Nothing left"


@dataclass
class Result:
    votes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    acknowledged: list[tuple[str, str]] = field(default_factory=list)  # (rater, prompt voted on), as answered
    wall_s: float = 0.0

    def p(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def summary(self) -> dict[str, Any]:
        return {
            "votes": self.votes,
            "errors": len(self.errors),
            "wall_s": self.wall_s,
            "votes_per_s": self.votes / self.wall_s if self.wall_s else None,
            "latency_ms_p50": self.p(0.5),
            "latency_ms_p95": self.p(0.95),
            "latency_ms_max": max(self.latencies_ms, default=float("nan")),
            "latency_ms_mean": statistics.fmean(self.latencies_ms) if self.latencies_ms else float("nan"),
        }


def judge(answer: str, reference: str | None, package: str | None = None) -> float:
    """The `rules` preference as a score: 1 for following Debian's synopsis rules, plus ROUGE-L F (0–1) against
    the reference when there is one. Rules first: a compliant answer beats a closer one that breaks them."""
    from rouge_score import rouge_scorer

    score = float(follows_synopsis_rules(answer, package))
    if reference:
        score += rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, answer)["rougeL"].fmeasure
    return score


def choose(
    left: str,
    right: str,
    reference: str | None,
    prefer: str,
    noise: float,
    rng: random.Random,
    package: str | None = None,
) -> str:
    """A rater's pick: "left", "right" or "tie". `package` lets the `rules` preference check the rule a rater who
    reads the prompt can check too: the synopsis does not repeat the package's name."""
    if rng.random() < noise or prefer == "random" or (prefer == "reference" and not reference):
        return rng.choice(["left", "right"])
    if prefer == "left":
        return "left"
    if prefer == "rules":
        a, b = judge(left, reference, package), judge(right, reference, package)
    else:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        a, b = (scorer.score(reference, t)["rougeL"].fmeasure for t in (left, right))
    return "left" if a > b else "right" if b > a else "tie"


def debian_rows() -> dict[str, dict[str, str]]:
    """Each built-in Debian description (all splits) → its row (`package`, `synopsis`, ...): the synopsis task's
    prompt is the description itself, so a rater who reads the prompt knows the package whose name the synopsis
    must not repeat."""
    import json

    found: dict[str, dict[str, str]] = {}
    for split in builtin.info("debian-descriptions")["splits"]:
        with builtin.split_file("debian-descriptions", split).open() as f:
            for line in f:
                row = json.loads(line)
                found[row["description"]] = row
    return found


def prompt_facts(campaign: str) -> tuple[dict[str, str], dict[str, str]]:
    """What a simulated rater knows about each prompt of a campaign, keyed by the prompt text the app shows: its
    reference and, for a built-in Debian description (also one sent to a served model and sampled from the request
    log), its package; a Debian description without a reference of its own gets the dataset's synopsis."""
    from tuneloop.feedback import store

    debian = debian_rows()
    references: dict[str, str] = {}
    packages: dict[str, str] = {}
    for item in store.item_rows(campaign).values():
        text = store.prompt_text(item["prompt"])
        row = debian.get(text)
        if item["reference"] or row:
            references[text] = item["reference"] or row["synopsis"]
        if row:
            packages[text] = row["package"]
    return references, packages


def simulate(
    url: str,
    raters: list[tuple[str, str]],
    votes_per_rater: int,
    *,
    prefer: str = "reference",
    noise: float = 0.1,
    references: dict[str, str] | None = None,
    packages: dict[str, str] | None = None,
    seed: int = 0,
    stop: threading.Event | None = None,
    ramp_s: float = 5.0,
    timeout_s: float = 60.0,
) -> Result:
    """Every rater logs in and casts up to `votes_per_rater` pairwise votes, all raters at once (one thread
    each, logins spread over `ramp_s`). `references` maps the prompt text the app shows to its reference (for
    `prefer="reference"` and `"rules"`), `packages` to its package (for `"rules"`); `prompt_facts` gives both.
    Latency is measured per vote, from sending it to receiving the next item."""
    from gradio_client import Client

    result = Result()
    lock = threading.Lock()

    def rater(index: int, name: str, password: str) -> None:
        rng = random.Random(seed * 1_000 + index)
        time.sleep(ramp_s * index / max(len(raters), 1))  # people do not all log in in the same millisecond
        try:
            client = Client(url, auth=(name, password), verbose=False, httpx_kwargs={"timeout": timeout_s})
            prompt, left, right, _ = client.predict(api_name="/next_pairwise")
        except Exception as e:  # a rater who cannot even start is an error of the run, not of one vote
            with lock:
                result.errors.append(f"{name}: {type(e).__name__}: {e}")
            return
        for _ in range(votes_per_rater):
            if (stop is not None and stop.is_set()) or prompt.startswith(DONE):
                return
            reference, package = (references or {}).get(prompt), (packages or {}).get(prompt)
            choice = choose(left, right, reference, prefer, noise, rng, package=package)
            started = time.perf_counter()
            try:
                answer = client.predict("", api_name=f"/vote_{choice}")
            except Exception as e:
                with lock:
                    result.errors.append(f"{name}: {type(e).__name__}: {e}")
                return
            took = (time.perf_counter() - started) * 1000
            with lock:
                result.votes += 1
                result.latencies_ms.append(took)
                result.acknowledged.append((name, prompt))
            prompt, left, right = answer[0], answer[1], answer[2]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(raters)) as pool:
        for future in [pool.submit(rater, i, n, p) for i, (n, p) in enumerate(raters)]:
            future.result()
    result.wall_s = time.perf_counter() - started
    return result
