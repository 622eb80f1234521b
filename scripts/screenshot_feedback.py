"""Screenshots of the rater app for docs/feedback.md: the compare view a rater sees and the admin view.

    python scripts/screenshot_feedback.py [--out docs/img]

Builds a throw-away workspace with a small synopsis campaign (real Debian descriptions and synopses; the two
"models" are the reference synopsis and a plausible-but-wrong one, so no model is loaded), casts votes from
simulated raters through the app's HTTP API, then photographs the pages in headless Chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from screenshot import find_browser  # noqa: E402


def _rows(n: int) -> list[dict]:
    from tuneloop.data import builtin

    fmt = builtin.task("debian-descriptions", "synopsis").format
    with (REPO / "data/debian-descriptions/test.jsonl").open() as f:
        data = [json.loads(line) for line, _ in zip(f, range(n + 1), strict=False)]
    rows = []
    for i, row in enumerate(data[:n]):
        other = data[i + 1]["synopsis"]
        prompt = [{"role": "system", "content": fmt.system}, {"role": "user", "content": row["description"]}]
        rows.append(
            {
                "prompt": prompt,
                "reference": row["synopsis"],
                "source": {"row": i},
                "gold": False,
                "responses": [
                    {
                        "model": "fine-tuned",
                        "model_ref": "ft",
                        "model_version": None,
                        "text": row["synopsis"],
                        "tokens": 8,
                        "correct": None,
                    },
                    {
                        "model": "base",
                        "model_ref": "base",
                        "model_version": None,
                        "text": f"A package that provides {other.lower()}.",
                        "tokens": 12,
                        "correct": None,
                    },
                ],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs/img")
    a = parser.parse_args()
    os.environ["TUNELOOP_HOME"] = tempfile.mkdtemp(prefix="feedback-shots-")
    from playwright.sync_api import sync_playwright

    from tuneloop.feedback import app, store
    from tuneloop.feedback.simulate import simulate

    spec = {
        "name": "synopsis-demo",
        "overlap": 3,
        "gold_threshold": 0.7,
        "gold_min_items": 5,
        "export": {},
        "tasks": {
            "pairwise": True,
            "rewrite": True,
            "rating": [{"name": "accurate", "text": "Does the synopsis describe the package?"}],
        },
    }
    guidelines = (REPO / "configs/feedback/synopsis-guidelines.md").read_text()
    store.save_campaign(spec, guidelines, "docs", _rows(30))
    store.add_rater("alice", "alice-password")
    store.add_rater("lead", "lead-password", "admin")
    sims = [(f"sim-{i}", f"sim-password-{i}") for i in range(3)]
    for name, password in sims:
        store.add_rater(name, password)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    app.serve("synopsis-demo", port=port, block=False)
    refs = {row["prompt"][1]["content"]: row["reference"] for row in _rows(30)}
    random.seed(0)
    simulate(url, sims, 20, prefer="reference", noise=0.15, references=refs, ramp_s=0.5)
    a.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_browser(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        for user in ("alice", "lead"):
            page.context.clear_cookies()
            page.goto(url)
            page.get_by_label("username").fill(user)
            page.get_by_label("password").fill(f"{user}-password")
            page.get_by_role("button", name="Login").click()
            page.get_by_text("votes cast").wait_for(timeout=30_000)
            if user == "alice":
                page.locator("#vote-left").click()
                page.get_by_text("1 votes cast").wait_for(timeout=15_000)
                page.screenshot(path=str(a.out / "feedback-rater.png"), full_page=True)
            else:
                page.get_by_role("tab", name="Admin").click()
                page.locator("#admin-refresh").click()
                page.get_by_text("pairwise:").first.wait_for(timeout=30_000)
                page.wait_for_timeout(1500)  # the plot renders after the table
                page.screenshot(path=str(a.out / "feedback-admin.png"), full_page=True)
        browser.close()
    print(f"wrote {a.out / 'feedback-rater.png'} and {a.out / 'feedback-admin.png'}")


if __name__ == "__main__":
    main()
