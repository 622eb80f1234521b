"""The rater app for real: Gradio serving a stored campaign, raters logging in through `gradio_client` and through
a headless Chromium (Playwright), votes by click and by keyboard, the admin view, what a rater's HTTP API calls
may not do, and model output full of HTML/JS that must never run."""

from __future__ import annotations

import re
import shutil
import socket

import pytest

pytestmark = pytest.mark.integration

XSS = [
    "<script>window.__xss = 'script'</script>",
    "<img src=x onerror=\"window.__xss = 'onerror'\">",
    "<a href=\"javascript:window.__xss = 'link'\">click</a>",
    "<svg onload=\"window.__xss = 'svg'\"></svg>",
    "<style>body { display: none }</style><b>bold?</b>",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_app(workspace):
    """A stored campaign whose prompts and answers are the XSS corpus, two raters and an admin, and the app."""
    from tuneloop.feedback import app, store

    rows = [
        {
            "prompt": [{"role": "user", "content": f"prompt {i}: {XSS[i % len(XSS)]}"}],
            "reference": None,
            "source": {"row": i},
            "gold": False,
            "responses": [
                {
                    "model": "m1",
                    "model_ref": "x",
                    "model_version": None,
                    "text": f"left {i} {XSS[(i + 1) % 5]}",
                    "tokens": 1,
                    "correct": None,
                },
                {
                    "model": "m2",
                    "model_ref": "y",
                    "model_version": None,
                    "text": f"right {i} {XSS[(i + 2) % 5]}",
                    "tokens": 1,
                    "correct": None,
                },
            ],
        }
        for i in range(6)
    ]
    spec = {
        "name": "xss",
        "overlap": 2,
        "tasks": {"pairwise": True, "rating": [{"name": "ok", "text": "Is it OK?"}], "rewrite": False},
        "gold_threshold": 0.7,
        "gold_min_items": 5,
        "export": {},
    }
    store.save_campaign(spec, "# Guidelines\nPrefer the **accurate** answer.", "test", rows)
    for name, role in (("ann", "rater"), ("bob", "rater"), ("lead", "admin")):
        store.add_rater(name, f"{name}-password", role)
    port = _free_port()
    app.serve("xss", port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    import gradio as gr

    gr.close_all()


def test_raters_vote_through_the_api_and_cannot_reach_admin_data(live_app):
    from gradio_client import Client

    from tuneloop.feedback import store

    ann = Client(live_app, auth=("ann", "ann-password"), verbose=False)
    prompt, left, right, status = ann.predict(api_name="/next_pairwise")
    assert prompt.startswith("prompt 0") and {left.split()[0], right.split()[0]} == {"left", "right"}
    assert "0 votes cast" in status
    after = ann.predict("", api_name="/vote_left")
    assert "1 votes cast" in after[3] and after[0].startswith("prompt 1")
    (vote,) = store.all_votes("xss")
    assert vote["rater"] == "ann" and vote["value"]["choice"] == "left"  # the logged-in rater, never a typed name
    with pytest.raises(Exception, match="admin view is for admins"):
        ann.predict(api_name="/admin")
    lead = Client(live_app, auth=("lead", "lead-password"), verbose=False)
    summary, ranking, _plot, raters = lead.predict(api_name="/admin")
    assert "6 items" in summary and "pairwise: 1 votes" in summary
    assert [row[0] for row in raters["data"]] == ["ann"]
    assert {row[1] for row in ranking["data"]} == {"m1", "m2"}
    with pytest.raises(Exception):  # noqa: B017 (gradio_client raises its own error types for a failed login)
        Client(live_app, auth=("ann", "wrong-password"), verbose=False)
    store.disable_rater("bob")
    with pytest.raises(Exception):  # noqa: B017
        Client(live_app, auth=("bob", "bob-password"), verbose=False)


@pytest.mark.slow
def test_browser_login_vote_by_click_and_keyboard_admin_view_and_no_script_runs(live_app):
    from playwright.sync_api import expect, sync_playwright

    from tuneloop.feedback import store

    browser_path = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    assert browser_path, "CI installs chromium-headless-shell (.ci/run)"
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(live_app)
        page.get_by_label("username").fill("ann")
        page.get_by_label("password").fill("ann-password")
        page.get_by_role("button", name="Login").click()
        expect(page.get_by_text("0 votes cast")).to_be_visible(timeout=30_000)
        expect(page.locator("#answer-left textarea")).to_have_value(re.compile(r"^(left|right) 0 <"))
        shown = page.locator("#answer-left textarea").input_value()
        page.locator("#vote-left").click()
        expect(page.get_by_text("1 votes cast")).to_be_visible(timeout=15_000)
        page.locator("h1").first.click()  # focus outside the text fields, where the shortcuts apply
        page.keyboard.press("2")  # right is better
        expect(page.get_by_text("2 votes cast")).to_be_visible(timeout=15_000)
        # the corpus reached the page as text (tags and all), and none of it ran
        assert "<" in shown and ">" in shown
        assert page.evaluate("() => window.__xss") is None and dialogs == []
        page.context.clear_cookies()
        page.goto(live_app)
        page.get_by_label("username").fill("lead")
        page.get_by_label("password").fill("lead-password")
        page.get_by_role("button", name="Login").click()
        page.get_by_role("tab", name="Admin").click()
        page.locator("#admin-refresh").click()
        expect(page.get_by_text("pairwise: 2 votes")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Bradley–Terry scores with 95% CIs")).to_be_visible()
        browser.close()
    choices = sorted(v["value"]["choice"] for v in store.all_votes("xss"))
    assert choices == ["left", "right"]


def _synthetic_campaign(name: str, items: int, overlap: int) -> None:
    from tuneloop.feedback import store

    rows = [
        {
            "prompt": [{"role": "user", "content": f"describe package {i}"}],
            "reference": f"tool number {i}",
            "source": {"row": i},
            "gold": False,
            "responses": [
                {
                    "model": "good",
                    "model_ref": "g",
                    "model_version": None,
                    "text": f"tool number {i}",
                    "tokens": 3,
                    "correct": None,
                },
                {
                    "model": "bad",
                    "model_ref": "b",
                    "model_version": None,
                    "text": "something else",
                    "tokens": 2,
                    "correct": None,
                },
            ],
        }
        for i in range(items)
    ]
    spec = {
        "name": name,
        "overlap": overlap,
        "tasks": {"pairwise": True, "rating": [], "rewrite": False},
        "gold_threshold": 0.7,
        "gold_min_items": 5,
        "export": {},
    }
    store.save_campaign(spec, "Prefer the accurate answer.", "test", rows)


def _accounts(n: int) -> list[tuple[str, str]]:
    from tuneloop.feedback import store

    accounts = [(f"sim-{i:03d}", f"sim-password-{i:03d}") for i in range(n)]
    for name, password in accounts:
        store.add_rater(name, password)
    return accounts


@pytest.mark.slow
def test_twenty_five_raters_at_once_leave_exactly_their_votes(workspace):
    """25 raters voting 20 times each at once. 50 ran here until CI time mattered: the invariants (every
    acknowledged vote stored once, overlap held, nobody judging an item twice) are the same at half the CPU."""
    from tuneloop.feedback import app, store
    from tuneloop.feedback.simulate import simulate

    _synthetic_campaign("load", items=60, overlap=10)  # 600 places for 500 votes: nobody runs dry
    accounts = _accounts(25)
    port = _free_port()
    app.serve("load", port=port, block=False)
    try:
        refs = {f"describe package {i}": f"tool number {i}" for i in range(60)}
        result = simulate(f"http://127.0.0.1:{port}/", accounts, 20, prefer="reference", noise=0.1, references=refs)
    finally:
        import gradio as gr

        gr.close_all()
    assert result.errors == [] and result.votes == 500
    votes = store.all_votes("load")
    assert len(votes) == 500
    assert len({(v["rater"], v["item_id"]) for v in votes}) == 500  # nobody judged an item twice
    per_item = {}
    for v in votes:
        per_item[v["item_id"]] = per_item.get(v["item_id"], 0) + 1
    assert max(per_item.values()) <= 10  # overlap holds under concurrency
    good = sum(
        v["value"]["winner"] is not None
        and store.item_rows("load")[v["item_id"]]["responses"][v["value"]["winner"]]["model"] == "good"
        for v in votes[:200]
    )
    assert good > 150  # of the first 200: raters preferring the reference picked the good answer (10% noise)
    print("load:", result.summary())


@pytest.mark.slow
def test_a_server_killed_mid_run_loses_no_acknowledged_vote(workspace, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from tuneloop.feedback import store
    from tuneloop.feedback.simulate import simulate

    _synthetic_campaign("crash", items=40, overlap=5)
    accounts = _accounts(8)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tuneloop", "feedback", "serve", "crash", "--port", str(port)],
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import urllib.request

        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except Exception:
                time.sleep(0.5)
        outcome = {}
        stop = threading.Event()
        runner = threading.Thread(
            target=lambda: outcome.setdefault("r", simulate(f"http://127.0.0.1:{port}/", accounts, 25, stop=stop))
        )
        runner.start()
        deadline = time.time() + 60
        while time.time() < deadline and len(store.all_votes("crash")) < 40:
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)  # mid-run: raters are still voting
        runner.join(timeout=120)
    finally:
        server.kill()
        server.wait()
    result = outcome["r"]
    # the kill came once 40 votes were stored; acknowledgements trail the commits by a few
    assert result.votes >= 20 and result.errors  # and the raters saw the server go away
    stored = {
        (v["rater"], store.item_rows("crash")[v["item_id"]]["prompt"][0]["content"]) for v in store.all_votes("crash")
    }
    lost = [ack for ack in result.acknowledged if ack not in stored]
    assert lost == [], f"{len(lost)} acknowledged votes are not in the store"
