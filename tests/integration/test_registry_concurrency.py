"""Real processes at once: four `tuneloop run`s registering into one registry, and a promotion killed half-way."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneloop.registry import aliases
from tuneloop.tracking import store

pytestmark = [pytest.mark.slow, pytest.mark.integration]
TUNELOOP = str(Path(sys.executable).with_name("tuneloop"))


def test_four_runs_registering_at_once_get_four_versions_and_one_consistent_champion(tiny_recipe, workspace):
    path = tiny_recipe("crowd")
    env = {**os.environ, "TUNELOOP_HOME": str(workspace)}
    procs = [
        subprocess.Popen([TUNELOOP, "run", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[-1500:] for o in outputs]
    assert not any("Traceback" in o or "warning: tracking failed" in o for o in outputs)
    c = store.client()
    versions = sorted(int(v.version) for v in c.search_model_versions("name='crowd'"))
    assert versions == [1, 2, 3, 4]
    assert len({v.run_id for v in c.search_model_versions("name='crowd'")}) == 4
    # promotions were decided one at a time: each champion move starts from the previous one's target
    moves = [e for e in aliases.history(c, "crowd") if e["alias"] == "champion"]
    assert moves and all(e["state"] == "done" for e in moves)
    assert moves[0]["from"] is None
    assert all(later["from"] == earlier["to"] for earlier, later in itertools.pairwise(moves))
    assert aliases.current(c, "crowd", "champion") == moves[-1]["to"]
    assert not any(m.name.endswith(".tuneloop-lock") for m in c.search_registered_models())


def test_promotion_killed_while_judging_leaves_the_registry_as_it_was(tiny_recipe, workspace, write, tiny_model):
    from typer.testing import CliRunner

    from tuneloop.cli import app

    path = tiny_recipe("killed")
    runner = CliRunner()
    for argv in (["run", str(path)], ["run", str(path), "--set", "stages.sft.args.learning_rate=0"]):
        assert runner.invoke(app, argv).exit_code == 0
    c = store.client()
    before = (c.get_registered_model("killed").aliases, len(aliases.history(c, "killed")))
    # a suite neither version was evaluated on: the promotion has to generate, which takes a while
    suite = write(
        "long-suite.yaml",
        """
name: long
tasks:
  - name: synopsis
    data: {source: debian-descriptions, task: synopsis}
    split: test
    max_rows: 400
    metrics: [rougeL]
    generation: {max_new_tokens: 64, batch_size: 4}
""",
    )
    env = {**os.environ, "TUNELOOP_HOME": str(workspace), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [TUNELOOP, "registry", "promote", "killed", "--version", "2", "--suite", str(suite)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    seen = b""
    deadline = time.monotonic() + 300
    while b"evaluating killed/" not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    assert b"evaluating killed/" in seen, seen.decode()[-2000:]
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    after = (c.get_registered_model("killed").aliases, len(aliases.history(c, "killed")))
    assert after == before
    assert not any(m.name.endswith(".tuneloop-lock") for m in c.search_registered_models())
