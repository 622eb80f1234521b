"""Cost-aware hyperparameter sweeps: Optuna searches recipe keys, every trial is a tracked run with its cost, a
budget is never overrun, and unpromising trials stop early — by Optuna's pruners for one objective, by tuneloop's
dominance rule at equal fidelity when quality and cost are both objectives (which Optuna cannot prune).

    spec.py      the `sweep:` section (or configs/sweeps/*.yaml) validated against its recipe, with file:line
    space.py     search spaces (given or default per method), samplers, `--set` overrides of a trial
    budget.py    what was spent and what a trial will cost (measured throughput of earlier trials)
    pruning.py   the Pareto rule and Optuna's pruners behind one `should_stop`
    engine.py    the trial loop around `study.optimize`: budget guard, reporting, failures as constraints
    live.py      the real executor: one recipe run per trial (pipeline.run) with intermediate evaluations
    report.py    Pareto front, history, importances, cost breakdown; `best` by the user's rule
"""
