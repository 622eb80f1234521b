"""What every report's plots share: a colour-blind-safe palette, one matplotlib style, and inline SVG output (so an
HTML report is one self-contained file). Evaluation, data and monitoring reports all draw with these."""

from __future__ import annotations

import io
from typing import Any

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def svg(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    text = buf.getvalue().decode("utf-8")
    return text[text.index("<svg") :]


def plot_style() -> Any:
    import matplotlib

    # text as paths renders the same in every browser; no mathtext so a "$" in a model label stays a "$"
    style = {"svg.fonttype": "path", "svg.hashsalt": "tuneloop", "text.parse_math": False, "font.size": 9}
    return matplotlib.rc_context(style)
