"""A sweep worker process for the worker tests: the real trial loop, Optuna storage and heartbeat, with trials
replayed from a table (each takes `delay` seconds) instead of trained. Run as a script."""

from __future__ import annotations

import sys

from tuneloop.config.sweep import Sweep
from tuneloop.sweep.engine import SweepLoop, open_storage, open_study
from tuneloop.sweep.replay import TableExecutor

if __name__ == "__main__":
    url, table, body, delay, heartbeat = sys.argv[1:6]
    executor = TableExecutor.load(table, float(delay))
    sweep = Sweep.model_validate_json(body)
    study = open_study(sweep, executor.space(), "workers", open_storage(url, int(heartbeat)))
    SweepLoop(sweep, executor.space(), study, executor, executor.planned_examples, collect_garbage=False).run()
