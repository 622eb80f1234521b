"""One monitor check: read the traffic window, compare it with the reference, weigh the triggers, apply the
cooldown, and record the decision (database row, report.json + report.html, MLflow metrics).

A check never loses what earlier checks stored and never half-writes one: its row is inserted last, after the
report is on disk, so a check killed midway leaves no decision that cooldowns or schedules would count.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuneloop import workspace
from tuneloop.config.monitor import Monitor
from tuneloop.config.schema import Recipe
from tuneloop.config.sweep import duration_s
from tuneloop.config.when import parse_when
from tuneloop.feedback.store import assignments, responses, votes
from tuneloop.monitor import drift as D
from tuneloop.monitor import store
from tuneloop.monitor.report import write_report
from tuneloop.serve.traffic import feedback_counts


def monitor_name(recipe: Recipe) -> str:
    assert recipe.monitor is not None
    return recipe.monitor.name or recipe.name


def watched_model(recipe: Recipe) -> str:
    assert recipe.monitor is not None
    return recipe.monitor.model or (recipe.registry.name if recipe.registry else "")


def run_check(
    recipe: Recipe, recipe_path: Path, *, now: datetime | None = None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run one check and return its report (also written to `<workspace>/monitor/<name>/<time>/report.json`)."""
    from tuneloop.monitor import reference as R

    monitor = recipe.monitor
    assert monitor is not None, "the caller checks that the recipe has a `monitor:` section"
    name = monitor_name(recipe)
    now = now or datetime.now(UTC)
    window = R.window(monitor)
    report: dict[str, Any] = {
        "monitor": name,
        "model": watched_model(recipe),
        "checked_at": now.isoformat(),
        "window": {"since": monitor.window.since, "requests": len(window.prompts), **window.meta},
        "embedding": None,
        "descriptors": [],
        "drift": None,
    }
    if len(window.prompts) < monitor.window.min_requests:
        say(
            f"{len(window.prompts)} request(s) in the last {monitor.window.since}; drift is judged from "
            f"{monitor.window.min_requests} (monitor.window.min_requests)"
        )
    else:
        ref = R.reference(recipe, recipe_path, monitor, say=say)
        say(f"comparing {len(window.prompts)} request(s) with {len(ref.prompts)} reference row(s): {ref.meta['what']}")
        report["reference"] = {"what": ref.meta["what"], "rows": len(ref.prompts)}
        say("embedding prompts with all-MiniLM-L6-v2 (the reference's, and each request's, are kept for later checks)")
        embedding = D.embedding_drift(
            R.embeddings(ref.prompts),
            R.window_embeddings(window.prompts),
            monitor.drift.embedding_auc,
            monitor.drift.embedding_p_value,
            seed=monitor.seed,
        )
        if "language" in monitor.drift.descriptors:
            say("detecting languages (lingua, offline)")
        scores = embedding.pop("window_scores")
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i])[: D.EXAMPLES]
        embedding["most_unlike_reference"] = [{"prompt": window.prompts[i][:500], "score": scores[i]} for i in ranked]
        descriptors = D.descriptor_drift(
            ref, window, list(monitor.drift.descriptors), monitor.drift.p_value, seed=monitor.seed
        )
        report.update(
            embedding=embedding, descriptors=descriptors, drift=D.verdict(embedding, descriptors, monitor.drift.share)
        )
        report["plots_data"] = {
            "reference_prompt_words": [D.words(t) for t in ref.prompts],
            "window_prompt_words": [D.words(t) for t in window.prompts],
        }
    reasons, signals = _triggers(recipe, monitor, name, report, now)
    report["signals"] = signals
    decision, held_until = _decide(monitor, name, reasons, report, now)
    report.update(decision=decision, reasons=reasons, held_until=held_until)
    out = workspace.home() / "monitor" / name / now.strftime("%Y%m%dT%H%M%S")

    report["path"] = str(out)
    write_report(report, out, store.history(name, limit=200))
    drift = report["drift"]
    auc = report["embedding"]["roc_auc"] if report["embedding"] else None
    report["id"] = store.record(
        name, now, len(window.prompts), None if drift is None else drift["drift"], auc, decision, reasons, str(out)
    )
    _track(recipe, name, report)
    return report


def _triggers(
    recipe: Recipe, monitor: Monitor, name: str, report: dict[str, Any], now: datetime
) -> tuple[list[str], dict[str, Any]]:
    """The triggers that are met, in words, and the signals behind them (also kept when none is met)."""
    t = monitor.triggers
    reasons: list[str] = []
    signals: dict[str, Any] = {}
    since_round = store.last_fired(name)
    if t.drift and report["drift"] and report["drift"]["drift"]:
        reasons.append("drift: " + "; ".join(report["drift"]["reasons"]))
    if t.new_votes is not None:
        votes = new_votes(watched_model(recipe), monitor.window.model, since_round)
        signals["new_votes"] = votes
        if votes >= t.new_votes:
            reasons.append(f"new votes: {votes} since the last round (at least {t.new_votes})")
    if t.thumbs_down is not None:
        counts = feedback_counts(monitor.window.model, parse_when(monitor.window.since, now))
        rated = counts["up"] + counts["down"]
        share = counts["down"] / rated if rated else None
        signals["thumbs"] = {**counts, "down_share": share}
        if share is not None and rated >= t.thumbs_down.min_ratings and share > t.thumbs_down.above:
            reasons.append(f"thumbs down: {share:.0%} of {rated} ratings (above {t.thumbs_down.above:.0%})")
    if t.every is not None:
        start = since_round or store.first_check(name) or now
        due = start + timedelta(seconds=duration_s(t.every))
        signals["schedule_due"] = due.isoformat()
        if now >= due:
            reasons.append(
                f"schedule: every {t.every} (last round {since_round.isoformat() if since_round else 'never'})"
            )
    return reasons, signals


def _decide(
    monitor: Monitor, name: str, reasons: list[str], report: dict[str, Any], now: datetime
) -> tuple[str, str | None]:
    if not reasons:
        return ("no traffic" if report["drift"] is None else "none"), None
    last = store.last_fired(name)
    if last is not None:
        until = last + timedelta(seconds=duration_s(monitor.cooldown))
        if now < until:
            return "held", until.isoformat()
    return "fired", None


def new_votes(model: str, served: str | None, since: datetime | None) -> int:
    """Votes submitted since `since` in campaigns that judge the watched model: answers generated from
    `models:/<model>...` or sampled from its served traffic."""
    from sqlalchemy import func, or_, select

    from tuneloop import db

    about = [responses.c.model_ref.like(f"models:/{model}/%"), responses.c.model_ref.like(f"models:/{model}@%")]
    if served:
        about.append(responses.c.model_ref == f"request-log#{served}")
    judged = select(responses.c.id).where(or_(*about))
    q = (
        select(func.count(votes.c.id))
        .select_from(votes.join(assignments, votes.c.assignment_id == assignments.c.id))
        .where(or_(assignments.c.left_id.in_(judged), assignments.c.right_id.in_(judged)))
    )
    if since is not None:
        q = q.where(votes.c.submitted_at > since)
    with db.engine().connect() as conn:
        return int(conn.execute(q).scalar() or 0)


def _track(recipe: Recipe, name: str, report: dict[str, Any]) -> None:
    """Each check is a step of one long-lived MLflow run per monitor (`monitor/<name>`), so MLflow plots the
    AUC and descriptor p-values over time. Tracking never fails a check: the database row is the record."""
    if not recipe.tracking.mlflow:
        return
    try:
        from mlflow.entities import Metric

        from tuneloop.tracking import store as S

        S.quiet()
        client = S.client()
        experiment = S.experiment_id(client, recipe.tracking.experiment or recipe.name)
        found = client.search_runs([experiment], f"tags.`tuneloop.monitor` = '{name}'", max_results=1)
        run_id = (
            found[0].info.run_id
            if found
            else client.create_run(
                experiment, run_name=f"monitor/{name}", tags={"tuneloop.kind": "monitor", "tuneloop.monitor": name}
            ).info.run_id
        )
        ts = int(datetime.fromisoformat(report["checked_at"]).timestamp() * 1000)
        values = {"requests": report["window"]["requests"], "triggered": float(report["decision"] == "fired")}
        if report["embedding"]:
            values["embedding_auc"] = report["embedding"]["roc_auc"]
            values["drift"] = float(report["drift"]["drift"])
        for d in report["descriptors"]:
            if "p_value" in d:
                values[f"p_value.{d['descriptor']}"] = d["p_value"]
        thumbs = report["signals"].get("thumbs")
        if thumbs and thumbs["down_share"] is not None:
            values["thumbs_down_share"] = thumbs["down_share"]
        metrics = [Metric(k, float(v), ts, report["id"]) for k, v in values.items()]
        S.retry(lambda: client.log_batch(run_id, metrics=metrics))
        client.log_artifacts(run_id, report["path"], artifact_path=f"checks/{Path(report['path']).name}")
    except Exception as e:
        print(f"warning: the check was not tracked in MLflow ({type(e).__name__}: {e})")
