"""Sweep workers on a real PostgreSQL (pgserver): four processes share one study without losing or duplicating
trials, and a worker killed with SIGKILL mid-trial leaves a trial that the heartbeat fails and a retry finishes,
within the budget. Trials are replayed from a table (sweep_worker.py) so that forty of them take seconds."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tuneloop.sweep import budget as B
from tuneloop.sweep.engine import open_storage

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WORKER = Path(__file__).with_name("sweep_worker.py")


@pytest.fixture
def postgres(tmp_path):
    import pgserver

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


def _table(path: Path) -> Path:
    configs = []
    for lr in [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2]:
        for bs in [1, 2, 4, 8, 16, 32]:
            final = 30 - 6 * abs(math.log10(lr) + 3) + math.log2(bs)
            per_step = 0.001 * bs
            configs.append(
                {
                    "params": {"lr": lr, "bs": bs},
                    "progress": [[s, final * s / 8, per_step * s, per_step * s / 0.085] for s in (2, 4, 6, 8)],
                    "values": {"synopsis/rougeL": final},
                    "cost": {"money": per_step * 8 + 0.002, "device_hours": (per_step * 8 + 0.002) / 0.085},
                    "train_cost": {"money": per_step * 8, "device_hours": per_step * 8 / 0.085},
                    "eval_cost": {"money": 0.002, "device_hours": 0.002 / 0.085},
                    "trained_examples": 8 * bs,
                }
            )
    path.write_text(json.dumps({"configs": configs}))
    return path


def _start(url: str, table: Path, sweep: dict, delay: float, heartbeat: int) -> subprocess.Popen:
    cmd = [sys.executable, str(WORKER), url, str(table), json.dumps(sweep), str(delay), str(heartbeat)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _study(url: str):
    return optuna.load_study(study_name="workers", storage=open_storage(url, None))


def test_four_workers_share_one_study_without_lost_or_duplicated_trials(postgres, tmp_path):
    table = _table(tmp_path / "table.json")
    sweep = {
        "objectives": [{"metric": "synopsis/rougeL"}, {"cost": "money"}],
        "budget": {"trials": 44},
        "sampler": "random",
        "pruning": {"every_steps": 2},
    }
    workers = [_start(postgres, table, sweep, 0.1, 5) for _ in range(4)]
    for w in workers:
        out, _ = w.communicate(timeout=300)
        assert w.returncode == 0, out
    trials = _study(postgres).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # none lost, none twice
    started = [t for t in trials if t.user_attrs.get("outcome") != "not started"]
    # each worker checks the count before it starts a trial, so at most workers - 1 trials start past the limit
    assert 44 <= len(started) <= 44 + 3
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in started)
    assert len({t.user_attrs["worker"] for t in started}) == 4  # every worker ran trials
    by_params = {json.dumps(c["params"], sort_keys=True): c for c in json.loads(table.read_text())["configs"]}
    for t in started:  # each trial paid for what it ran, once
        expected = by_params[json.dumps(t.params, sort_keys=True)]
        if t.state.name == "COMPLETE":
            assert B.spent_of(t)["money"] == pytest.approx(expected["cost"]["money"])
        else:
            assert B.spent_of(t)["money"] == pytest.approx(t.user_attrs["progress"][-1][2])


def test_a_killed_worker_s_trial_is_failed_by_the_heartbeat_and_retried_within_budget(postgres, tmp_path):
    table = _table(tmp_path / "table.json")
    budget = 1.0
    sweep = {
        "objectives": [{"metric": "synopsis/rougeL"}, {"cost": "money"}],
        "budget": {"money": budget},
        "sampler": "random",
        "seed": 1,
    }
    victim = _start(postgres, table, sweep, 3.0, 1)
    deadline = time.time() + 60
    killed = None
    while time.time() < deadline and killed is None:
        time.sleep(0.3)
        try:
            trials = _study(postgres).get_trials(deepcopy=False)
        except KeyError:  # the study is not created yet
            continue
        for t in trials:
            if t.state.name == "RUNNING" and len(t.user_attrs.get("progress") or []) >= 1:
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
                killed = t.number
                spent_at_kill = B.spent_of(t)["money"]
    assert killed is not None, "no trial got going"
    survivor = _start(postgres, table, sweep, 0.2, 1)
    out, _ = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, out
    trials = _study(postgres).get_trials(deepcopy=False)
    dead = trials[killed]
    assert dead.state.name == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].params == dead.params
    assert retries[0].state.name in ("COMPLETE", "PRUNED"), (retries[0].user_attrs, out)
    assert B.spent_of(dead)["money"] >= spent_at_kill > 0  # the killed trial's spend is counted, once
    assert B.total_spent(trials)["money"] <= 1.05 * budget
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
