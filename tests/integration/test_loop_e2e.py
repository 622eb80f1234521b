"""One tiny feedback round end to end, through the real pieces a user runs: `tuneloop serve --follow champion`
(gateway and transformers engine) answering the official `openai` client, its request log, `tuneloop loop` as a
command, the feedback store and queue (the rater app's own calls), DPO training, evaluation against the champion,
the registry's promotion — and the server swapping to the promoted challenger under steady traffic without a failed
request."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from tests.integration.test_serve import _cli, _kill, _start
from tests.unit.test_loop import LOOP, _vote_all

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_a_round_from_served_traffic_to_a_hot_swapped_champion(tiny_recipe, workspace, tmp_path):
    path = tiny_recipe("loopy", tail=LOOP)
    _cli(workspace, "run", str(path))  # models:/loopy/1 is the champion
    ep = _start(
        workspace,
        [
            "models:/loopy@champion",
            "--engine",
            "transformers",
            "--name",
            "synopsis",
            "--no-auth",
            "--follow",
            "champion",
            "--poll",
            "1",
        ],
        tmp_path / "serve.log",
        timeout=240,
    )
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()
    try:
        client = openai.OpenAI(base_url=f"{ep.url}/v1", api_key="none", max_retries=0, timeout=120)
        for i in range(6):  # what users asked: the round's prompts come from here
            msgs = [{"role": "user", "content": f"Describe package served-{i}"}]
            r = client.chat.completions.with_raw_response.create(model="synopsis", messages=msgs, max_tokens=6)
            assert r.headers["x-tuneloop-model-version"] == "loopy/1"

        lenient = ["--set", "evaluation.gate=[{metric: perplexity, max_drop: 1000}]"]
        waiting = _cli(workspace, "loop", str(path), "--no-wait", *lenient)
        assert "round 1: waiting" in waiting.stdout and "0 of 4 usable votes" in waiting.stdout
        assert _vote_all("loopy-r1") == 6  # raters work through the queue the rater app serves

        def traffic() -> None:
            while not stop.is_set():
                try:
                    r = client.chat.completions.with_raw_response.create(
                        model="synopsis", messages=[{"role": "user", "content": "Say something."}], max_tokens=4
                    )
                    versions.append(r.headers["x-tuneloop-model-version"])
                    r.parse()
                except Exception as e:
                    failures.append(f"{type(e).__name__}: {e}")
                time.sleep(0.3)

        thread = threading.Thread(target=traffic)
        thread.start()
        done = _cli(workspace, "loop", str(path), *lenient)
        assert "round 1: done" in done.stdout and "decision: promoted" in done.stdout, done.stdout
        assert "feedback/preference_accuracy" in done.stdout  # the held-out votes judged both models
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (not versions or versions[-1] != "loopy/2"):
            time.sleep(1)
        time.sleep(3)
        stop.set()
        thread.join(120)
        assert not failures, failures[:5]
        assert "loopy/1" in versions and versions[-1] == "loopy/2", versions[-10:]
        assert "@champion moved (synopsis 1 → 2)" in ep.output() and "previous engine stopped" in ep.output()
        lineage = _cli(workspace, "registry", "lineage", "loopy/2").stdout
        assert "loopy/1" in lineage
        history = _cli(workspace, "loop", "history", "loopy").stdout
        assert "champion: 1 → 2" in history  # the alias history the rounds made
    finally:
        stop.set()
        _kill(ep.proc)
