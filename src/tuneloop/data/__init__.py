"""Data sources (built-in, local files, hub datasets), TRL formatting, and content fingerprints."""

from __future__ import annotations

from tuneloop.data.sources import PreparedData, load_data

__all__ = ["PreparedData", "load_data"]
