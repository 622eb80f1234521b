"""Text from outside (client prompts and outputs, rater and campaign names, registry names, tags and reasons, loop
and monitor records, data rows) reaches the operator's views as the characters it is: rich markup printed
literally (a stray `[/bold]` once made `tuneloop serve requests` exit 1 with a MarkupError) and terminal control
sequences written out (`\\x1b[31m`), never obeyed. Each view is fed the same corpus through the real stores."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from io import StringIO

from rich.console import Console
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.untrusted import safe, visible

runner = CliRunner()

# (what a client, rater or file sends, what the operator must see)
CORPUS = [
    ("[/bold]", "[/bold]"),
    ("[link=http://evil]x[/link]", "[link=http://evil]x[/link]"),
    ("[red]boom", "[red]boom"),
    ("\x1b[31mred\x1b[0m", r"\x1b[31mred\x1b[0m"),
    ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "\\x1b]8;;http://evil\\x1b\\link\\x1b]8;;\\x1b\\"),
    ("ding\x07", r"ding\x07"),
    ("safe\rEVIL", r"safe\rEVIL"),
    ("\x9b31mc1", r"\x9b31mc1"),
]
PAYLOADS = [sent for sent, _ in CORPUS]
# what must never reach the terminal raw: C0 but newline and tab (rich drops some itself), DEL and C1
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
WIDE = {"COLUMNS": "1000"}


def _shows_every_payload(result, payloads: list[str] | None = None, stdout_only: bool = False) -> None:
    """Exit 0, no raw control character in the output, and each payload (all, or those named) shown as sent."""
    assert result.exit_code == 0, result.output
    _literal(result.stdout if stdout_only else result.output, payloads)


def _literal(output: str, payloads: list[str] | None = None) -> None:
    assert not RAW_CONTROL.search(output), repr(output)
    for sent, shown in CORPUS:
        if payloads is None or sent in payloads:
            assert shown in output, (shown, output)


def test_safe_and_visible_write_out_control_characters_and_escape_markup():
    console = Console(record=True, width=200, highlight=False, soft_wrap=True)
    for sent, shown in CORPUS:
        console.print(f"[bold]{safe(sent)}[/]")
        console.print(visible(sent), markup=False)
        text = console.export_text()
        assert text == f"{shown}\n{shown}\n", (sent, text)
    assert visible("two\nlines\tand a tab") == "two\nlines\tand a tab"
    assert visible("\u202eevil") == r"\u202eevil"  # a bidi override would reorder the line on screen
    console.print(f"[bold]{safe('ends in a backslash' + chr(92))}[/] after")  # must not escape the closing tag
    assert console.export_text() == "ends in a backslash\\ after\n"


def _request(i: int, prompt: str, output: str) -> dict:
    return {
        "request_id": f"r{i}",
        "ts": datetime.now(UTC),
        "key_id": None,
        "endpoint": "chat.completions",
        "model": prompt,  # a client may name any model; unknown names are logged too
        "version": None,
        "stream": False,
        "status": 200,
        "latency_ms": 5.0,
        "ttft_ms": None,
        "body": {"model": prompt, "messages": [{"role": "user", "content": prompt}]},
        "raw": json.dumps({"choices": [{"message": {"role": "assistant", "content": output}}]}).encode(),
    }


def test_serve_requests_shows_client_prompts_and_outputs_literally():
    from tuneloop.serve.store import RequestLog

    log = RequestLog()
    for i, p in enumerate(PAYLOADS):
        log.append(_request(i, p, p))
    log.close()
    _shows_every_payload(runner.invoke(app, ["serve", "requests", "-n", "50"], env=WIDE))


def test_feedback_views_show_campaign_rater_and_model_names_literally():
    from tuneloop.feedback import queue, store

    name = "campaign [/bold] \x1b[31mred\x1b[0m"
    response = {"model_ref": "x", "model_version": None, "tokens": 1, "correct": None}
    rows = [
        {
            "prompt": p,
            "reference": None,
            "source": {"row": i},
            "gold": False,
            "responses": [
                {**response, "model": f"a {p}", "text": p},
                {**response, "model": f"b {p}", "text": "other"},
            ],
        }
        for i, p in enumerate(PAYLOADS)
    ]
    spec = {
        "name": name,
        "overlap": 1,
        "tasks": {"pairwise": True, "rating": [], "rewrite": False},
        "gold_threshold": 0.7,
        "gold_min_items": 5,
        "export": {},
    }
    store.save_campaign(spec, "guidelines", "tests", rows)
    for i, p in enumerate(PAYLOADS):
        rater = f"rater {p}"
        store.add_rater(rater, "a-password")
        a = queue.next_assignment(name, rater, "pairwise")
        queue.record_vote(a.id, rater, {"choice": "left"}, f"vote-{i}")
    _shows_every_payload(runner.invoke(app, ["feedback", "list"], env=WIDE), [PAYLOADS[0], PAYLOADS[3]])
    _shows_every_payload(runner.invoke(app, ["feedback", "raters", "list"], env=WIDE))
    _shows_every_payload(runner.invoke(app, ["feedback", "status", name], env=WIDE))  # raters and models
    result = runner.invoke(app, ["feedback", "close", name], env=WIDE)
    _shows_every_payload(result, [PAYLOADS[0], PAYLOADS[3]])


def test_registry_views_show_names_tags_descriptions_and_reasons_literally(tmp_path):
    from tuneloop.registry import aliases
    from tuneloop.tracking import store

    c = store.client()
    description = " ".join(PAYLOADS)
    # MLflow takes any name without '/' or ':' (tuneloop's references are stricter, so this one is only listed)
    c.create_registered_model("odd[red]boom\x1b[31m", description=description)
    name = "tagged"
    c.create_registered_model(name, description=description)
    (tmp_path / "weights").mkdir()
    tags = {
        "tuneloop.metrics": json.dumps({PAYLOADS[0]: [0.5, 0.4, 0.6]}),
        "tuneloop.gate": PAYLOADS[3],
        "tuneloop.gate.detail": description,
        "tuneloop.recipe": PAYLOADS[4],
        "tuneloop.run_dir": PAYLOADS[1],
        "tuneloop.data.train": PAYLOADS[7],
        "tuneloop.base_model": PAYLOADS[5],
    }
    mv = c.create_model_version(name, str(tmp_path / "weights"), tags=tags)
    for p in PAYLOADS:
        aliases.move(c, name, "champion", mv.version, "promote", reason=p, forced=True)
    env = {**WIDE, "TUNELOOP_USER": PAYLOADS[2]}  # `by`: who moved the alias
    listed = runner.invoke(app, ["registry", "list"], env=env)
    assert r"odd[red]boom\x1b[31m" in listed.output
    _shows_every_payload(listed, [PAYLOADS[0]])  # the description's first 60 characters
    _shows_every_payload(runner.invoke(app, ["registry", "show", name], env=env), [PAYLOADS[0], PAYLOADS[3]])
    _shows_every_payload(runner.invoke(app, ["registry", "history", name], env=env))
    _shows_every_payload(runner.invoke(app, ["registry", "show", f"{name}/1"], env=env))
    _shows_every_payload(
        runner.invoke(app, ["registry", "lineage", f"{name}/1"], env=env), [*PAYLOADS[3:6], PAYLOADS[7]]
    )


def test_loop_views_show_round_records_literally():
    from tuneloop.loop import store

    rnd = store.open_round("loop [/bold]", "model")
    store.save(
        rnd,
        status="stopped",
        step=PAYLOADS[1],
        state={"campaign": PAYLOADS[2], "decision": PAYLOADS[3], "reason": " ".join(PAYLOADS)},
    )
    _shows_every_payload(runner.invoke(app, ["loop", "status", "loop [/bold]"], env=WIDE))
    _shows_every_payload(runner.invoke(app, ["loop", "history", "loop [/bold]"], env=WIDE), PAYLOADS[:4])


def test_monitor_history_and_a_checks_printout_show_reasons_and_traffic_literally(write, monkeypatch):
    from tuneloop.cli import monitor as cli_monitor
    from tuneloop.monitor import store

    write("ref.jsonl", json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    path = write(
        "watch.yaml",
        """
        name: watch
        base_model: smollm2-135m-instruct
        data: {source: ref.jsonl}
        stages: [{name: sft, method: sft}]
        monitor: {model: watch}
        """,
    )
    store.record("watch", datetime.now(UTC), 3, True, 0.9, "fired", PAYLOADS, None)
    _shows_every_payload(runner.invoke(app, ["monitor", "history", str(path)], env=WIDE))
    # a check's printout: its reasons, and descriptors whose values are what the traffic held (its languages)
    report = {
        "decision": "fired",
        "reasons": PAYLOADS,
        "held_until": None,
        "embedding": {"roc_auc": 0.9, "p_value": 0.001, "drift": True},
        "descriptors": [
            {"descriptor": "language", "reference": {"en": 1}, "window": {p: 1}, "p_value": 0.1, "drift": True}
            for p in PAYLOADS
        ],
        "path": "reports/check-1",
    }
    buffer = StringIO()
    monkeypatch.setattr(cli_monitor, "out", Console(file=buffer, width=1000, highlight=False, soft_wrap=True))
    cli_monitor._print(report)
    _literal(buffer.getvalue())


def test_data_inspect_shows_labels_and_split_names_literally(write):
    rows = [{"prompt": f"question {i} about {p}", "completion": "answer", "label": p} for i, p in enumerate(PAYLOADS)]
    path = write("evil.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(
        app,
        ["data", "inspect", str(path), "--tokenizer", "none", "--label", "label", "-o", str(path.parent / "r")],
        env=WIDE,
    )
    _shows_every_payload(result, stdout_only=True)  # stderr has the datasets library's progress bars (`\r`)
