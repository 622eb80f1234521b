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
