"""The closed loop, measured: serve a champion, send it traffic, run feedback rounds with simulated raters whose
preference is known, and see whether the champion gets better at what they want.

1. `recipes/retrain-loop.yaml` makes the first champion (LoRA SFT of the built-in model) unless one exists.
2. `tuneloop serve synopsis-loop --follow champion` (transformers engine) answers the official `openai` client:
   the original champion's answers to the test descriptions are kept, to compare with later champions.
3. Each round: users' traffic (training-split descriptions, new ones every round) goes through the endpoint; the
   round creates its campaign from the request log (the served answer against one sampled from the champion);
   three simulated raters vote through the feedback queue — they prefer synopses that follow Debian's rules, then
   the one closer to the real synopsis (`feedback.simulate.judge`), and pick at random 20% of the time; the round
   exports DPO pairs, retrains, judges the challenger against the champion, and promotes it if the gate passes.
4. After each round the endpoint (which swaps to a promoted champion by itself) answers the test descriptions again,
   and the noise-free judge compares those answers with the original champion's: the win rate with its Wilson CI.
5. A last round retrains with a learning rate far too high: its challenger must be refused and the champion stay.

    python scripts/demo_loop.py                       # about 90 minutes on 2 CPU cores
    python scripts/demo_loop.py --rounds 1 --traffic 40 --test 40 --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "retrain-loop.yaml"
DATA = ROOT / "data" / "debian-descriptions"
MODEL = "synopsis-loop"
WRECK = (
    "loop.retrain=[{name: dpo, method: dpo, peft: {type: lora, r: 16, alpha: 32, target_modules: all-linear}, "
    "args: {learning_rate: 5.0e-3, beta: 0.1, num_train_epochs: 3, per_device_train_batch_size: 4, "
    "max_length: 320, save_steps: 1000}}]"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds with the recipe's retraining")
    parser.add_argument("--traffic", type=int, default=160, help="requests sent before each round")
    parser.add_argument("--test", type=int, default=100, help="test descriptions the win rate is judged on")
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--raters", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="recipe override (repeatable)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch docs/")
    a = parser.parse_args()

    from tuneloop.data import builtin
    from tuneloop.recipes import load_recipe

    fmt = builtin.task("debian-descriptions", "synopsis").format
    train = [json.loads(line) for line in (DATA / "train.jsonl").open()]
    test = [json.loads(line) for line in (DATA / "test.jsonl").open()][: a.test]
    pool = train[128:]  # the champion trained on the first 128 rows (data.max_train_rows)
    references = {r["description"]: r for r in train + test}
    recipe = load_recipe(RECIPE, a.sets)
    started = time.time()
    _champion(recipe, a.sets)
    server = _serve()
    rows: list[dict] = []
    try:
        original = _answers(server, test, fmt)
        for number in range(1, a.rounds + 2):
            wreck = number == a.rounds + 1
            sets = [*a.sets, WRECK] if wreck else a.sets
            batch = pool[(number - 1) * a.traffic : number * a.traffic]
            _answers(server, batch, fmt)  # users' traffic: lands in the request log
            rnd = _round(load_recipe(RECIPE, sets), sets, references, a)
            if rnd["state"].get("decision") == "promoted":
                _wait_for(server, f"{MODEL}/{rnd['state']['version']}")
            now = _answers(server, test, fmt)
            rows.append(_row(number, rnd, original, now, test, wreck))
            print(json.dumps(rows[-1], indent=1, default=str))
    finally:
        _stop(server)
    lines = _markdown(rows, a, time.time() - started)
    print("\n".join(lines))
    if not a.no_write:
        (ROOT / "docs" / "bench" / "loop-demo.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
        with (ROOT / "docs" / "benchmarks.md").open("a") as f:
            f.write("\n" + "\n".join(lines) + "\n")


def _champion(recipe, sets: list[str]) -> None:
    from tuneloop import pipeline
    from tuneloop.models.registered import get_version

    with contextlib.suppress(Exception):
        get_version(f"models:/{MODEL}@champion")
        print(f"{MODEL}@champion exists: rounds start from it")
        return
    print(f"training the first champion ({RECIPE.name})")
    pipeline.run(recipe, RECIPE)


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log


def _serve() -> Server:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from tuneloop import workspace

    log = workspace.home() / "demo-serve.log"
    cmd = [
        str(Path(sys.executable).with_name("tuneloop")),
        "serve",
        f"models:/{MODEL}@champion",
        "--engine",
        "transformers",
        "--name",
        MODEL,
        "--no-auth",
        "--follow",
        "champion",
        "--poll",
        "2",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"tuneloop serve exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                print(f"serving {MODEL}@champion at {url}")
                return Server(proc, url, log)
        time.sleep(1)
    raise SystemExit("tuneloop serve did not become healthy in 10 minutes")


def _stop(server: Server) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.proc.wait(60)


def _answers(server: Server, rows: list[dict], fmt) -> list[tuple[str, str]]:
    """Each row's description sent as the training format sends it; (answer, served version) per row."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=2, timeout=300)
    out = []
    for r in rows:
        messages = [{"role": "system", "content": fmt.system}, {"role": "user", "content": fmt.prompt.format_map(r)}]
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, max_tokens=32, temperature=0
        )
        out.append((raw.parse().choices[0].message.content or "", raw.headers.get("x-tuneloop-model-version", "")))
    return out


def _wait_for(server: Server, version: str) -> None:
    for _ in range(900):
        health = json.loads(urllib.request.urlopen(f"{server.url}/health", timeout=10).read())
        if f"{MODEL}/{health.get('models', {}).get(MODEL)}" == version:
            return
        time.sleep(1)
    raise SystemExit(f"the endpoint did not swap to {version}")


def _round(recipe, sets: list[str], references: dict[str, dict], a) -> dict:
    """A round: campaign from the request log, simulated votes through the feedback queue, then retrain/judge."""
    import random

    from tuneloop.feedback import queue
    from tuneloop.feedback import store as fb
    from tuneloop.feedback.simulate import choose
    from tuneloop.loop.round import run_round

    rnd = run_round(recipe, RECIPE, overrides=sets, wait=False)
    if rnd["status"] != "waiting":
        return rnd
    campaign = rnd["state"]["campaign"]
    rng = random.Random(rnd["number"])
    known = {r["name"] for r in fb.list_raters()}
    for i in range(1, a.raters + 1):
        rater = f"sim-{i:03d}"
        if rater not in known:
            fb.add_rater(rater, f"sim-password-{i:03d}")
        while (item := queue.next_assignment(campaign, rater, "pairwise")) is not None:
            prompt = item.prompt[-1]["content"] if isinstance(item.prompt, list) else item.prompt
            known_row = references.get(prompt) or {}
            choice = choose(
                item.left,
                item.right or "",
                known_row.get("synopsis"),
                "rules",
                a.noise,
                rng,
                package=known_row.get("package"),
            )
            queue.record_vote(item.id, rater, {"choice": choice}, f"{campaign}-{rater}-{item.id}")
    return run_round(recipe, RECIPE, overrides=sets, wait=False)


def _row(number: int, rnd: dict, original, now, test: list[dict], wreck: bool) -> dict:
    from tuneloop.feedback.simulate import judge
    from tuneloop.feedback.stats import wilson
    from tuneloop.rewards import follows_synopsis_rules

    wins = 0.0
    for (old, _), (new, _), r in zip(original, now, test, strict=True):
        a, b = judge(new, r["synopsis"], r["package"]), judge(old, r["synopsis"], r["package"])
        wins += 1.0 if a > b else 0.5 if a == b else 0.0
    rate = wilson(round(wins), len(test))
    s = rnd["state"]
    return {
        "round": number,
        "retrain": "learning rate 5e-3, 3 epochs (meant to be worse)" if wreck else "the recipe's",
        "votes": s.get("votes"),
        "agreement": s.get("agreement"),
        "pairs": s.get("rows"),
        "decision": s.get("decision") or rnd["status"],
        "version": s.get("version"),
        "served": now[-1][1] if now else None,
        "deltas": s.get("deltas"),
        "win_rate_vs_original": {"value": rate.value, "ci": [rate.ci_low, rate.ci_high], "n": len(test)},
        "rules_share": sum(follows_synopsis_rules(t, r["package"]) for (t, _), r in zip(now, test, strict=True))
        / len(test),
        "cost": (s.get("cost") or {}).get("total"),
    }


def _markdown(rows: list[dict], a, wall: float) -> list[str]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    lines = [
        f"### Feedback loop demo — {time.strftime('%Y-%m-%d')} (commit {commit.stdout.strip()})",
        "",
        f"`scripts/demo_loop.py`: recipes/retrain-loop.yaml served by `tuneloop serve --follow champion`; {a.traffic} "
        f"new requests before each round; {a.raters} simulated raters preferring rule-following, then closer "
        f"synopses, with {a.noise:.0%} noise; win rate of the serving champion against the original one on "
        f"{a.test} test descriptions, judged by the same preference without noise (Wilson 95% CI). {wall / 60:.0f} "
        "min on 2 CPU cores.",
        "",
        "| round | retraining | votes | pairs | decision | served | win rate vs original | rules followed | "
        "challenger − champion (ROUGE-L, rules, held-out votes) |",
        "|---:|---|---:|---:|---|---|---|---:|---|",
    ]
    for r in rows:
        w = r["win_rate_vs_original"]
        deltas = "; ".join(
            f"{d['metric']} {d['diff']:+.1f} [{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}]"
            for d in r["deltas"] or []
            if d.get("ci")
        )
        lines.append(
            f"| {r['round']} | {r['retrain']} | {r['votes']} | {r['pairs']} | {r['decision']} | "
            f"{r['served']} | {100 * w['value']:.0f}% [{100 * w['ci'][0]:.0f}, {100 * w['ci'][1]:.0f}] | "
            f"{100 * r['rules_share']:.0f}% | {deltas} |"
        )
    return lines


if __name__ == "__main__":
    main()
