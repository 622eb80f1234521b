"""Render an HTML file (an evaluation report) to a full-page PNG with a headless Chromium, to look at it.

    python scripts/screenshot.py runs/.../report.html out.png [--width 1200] [--open-details]

Uses playwright with the system's Chromium (Debian: `apt-get install chromium-headless-shell`), not the browser
playwright downloads itself: that download needs the internet. Pass --browser to point at another binary.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

BROWSERS = ["chromium-headless-shell", "chromium", "google-chrome", "google-chrome-stable"]


def find_browser() -> str | None:
    """The first Chromium on PATH; the headless shell first since it starts fastest and needs no display."""
    return next(filter(None, map(shutil.which, BROWSERS)), None)


def screenshot(
    html: Path, png: Path, width: int = 1200, browser: str | None = None, open_details: bool = False
) -> Path:
    """Load html from disk (file:// URL, so a report that needs the network shows it as broken) and save a PNG."""
    from playwright.sync_api import sync_playwright

    executable = browser or find_browser()
    if executable is None:
        sys.exit("no Chromium found: apt-get install -y chromium-headless-shell (or pass --browser /path/to/chrome)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = chromium.new_page(viewport={"width": width, "height": 800})
            page.goto(html.resolve().as_uri(), wait_until="load")
            if open_details:  # collapsed <details> (worst examples) are otherwise invisible in a still image
                page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
            page.screenshot(path=str(png), full_page=True)
        finally:
            chromium.close()
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1200, help="viewport width in CSS pixels")
    parser.add_argument("--browser", help=f"Chromium binary (default: first of {', '.join(BROWSERS)} on PATH)")
    parser.add_argument("--open-details", action="store_true", help="expand every <details> before the shot")
    args = parser.parse_args()
    print(screenshot(args.html, args.png, args.width, args.browser, args.open_details))


if __name__ == "__main__":
    main()
