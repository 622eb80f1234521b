"""Gates: rules a candidate model must pass against its baseline before anything downstream trusts it.

Each rule is judged on the paired comparison (difference, its 95% CI, p-value) so a failure message carries
everything a reviewer needs: the rule, both values, the difference and its interval.
"""

from __future__ import annotations

from typing import Any

from tuneloop.config.evaluation import GateRule


def apply_gate(rules: list[GateRule], results_models: list[dict], comparisons: list[dict], candidate: str) -> dict:
    """Judge every rule; the gate passes only when all do."""
    judged = [_judge(rule, results_models, comparisons, candidate) for rule in rules]
    return {"passed": all(j["passed"] for j in judged), "candidate": candidate, "rules": judged}


def _find(metric: str, tasks: dict[str, Any]) -> tuple[str, dict] | None:
    task, _, name = metric.rpartition("/")
    for t, body in tasks.items():
        if (not task or t == task) and name in body["metrics"]:
            return t, body["metrics"][name]
    return None


def _judge(rule: GateRule, models: list[dict], comparisons: list[dict], candidate: str) -> dict[str, Any]:
    entry = next(m for m in models if m["label"] == candidate)
    found = _find(rule.metric, entry["tasks"])
    if found is None:
        return {"rule": _describe(rule), "passed": False, "detail": f"{rule.metric} was not computed"}
    task, value = found
    name = rule.metric.rpartition("/")[2]
    v = value["value"]
    hib = value["higher_is_better"]
    checks: list[tuple[bool, str]] = []
    if rule.min is not None:
        checks.append((v >= rule.min, f"{name} {v:.2f} {'≥' if v >= rule.min else '<'} {rule.min:g}"))
    if rule.max is not None:
        checks.append((v <= rule.max, f"{name} {v:.2f} {'≤' if v <= rule.max else '>'} {rule.max:g}"))
    if rule.max_drop is not None or rule.must_improve:
        comp = next((c for c in comparisons if c["b"] == candidate and c["task"] == task and c["metric"] == name), None)
        if comp is None:
            checks.append((False, f"no baseline result for {task}/{name} to compare with"))
        else:
            gain = comp["diff"] if hib else -comp["diff"]  # positive = better, in the metric's direction
            lo, hi = comp["ci"]
            where = (
                f"{comp['b']} {comp['b_value']:.2f} vs {comp['a']} {comp['a_value']:.2f}: "
                f"diff {comp['diff']:+.2f} (95% CI {lo:+.2f} to {hi:+.2f}, {_p(comp['p_value'])})"
            )
            if rule.max_drop is not None:
                ok = gain >= -rule.max_drop
                checks.append((ok, f"{where}; allowed drop {rule.max_drop:g}"))
            if rule.must_improve:
                ok = gain > 0 and comp["p_value"] < rule.p_value
                checks.append((ok, f"{where}; must improve with p < {rule.p_value:g}"))
    return {
        "rule": _describe(rule),
        "task": task,
        "metric": name,
        "value": v,
        "passed": all(ok for ok, _ in checks),
        "detail": "; ".join(text for _, text in checks),
    }


def _describe(rule: GateRule) -> str:
    parts = []
    if rule.must_improve:
        parts.append(f"must beat the baseline (p < {rule.p_value:g})")
    if rule.max_drop is not None:
        parts.append(f"must not drop more than {rule.max_drop:g} vs the baseline")
    if rule.min is not None:
        parts.append(f"must be ≥ {rule.min:g}")
    if rule.max is not None:
        parts.append(f"must be ≤ {rule.max:g}")
    return f"{rule.metric} " + " and ".join(parts)


def _p(p: float) -> str:
    """1000 resamples cannot resolve p below 1/1001: say so instead of printing 0.000999."""
    return "p<0.001" if p < 0.001 + 1e-9 else f"p={p:.3f}"
