"""tuneloop: fine-tune, evaluate, register, serve and retrain language models from one recipe."""

from __future__ import annotations

__version__ = "0.1.0"
