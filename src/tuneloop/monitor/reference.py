"""The two sides of a drift check: the window of served traffic, and the reference it is compared with (the
champion's training data by default, read through its registered recipe, so the monitor compares traffic with what
the served model actually learned from)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop import workspace
from tuneloop.config.monitor import Monitor
from tuneloop.config.schema import Recipe
from tuneloop.data.sources import load_data
from tuneloop.errors import TuneloopError
from tuneloop.models.registered import get_version
from tuneloop.monitor.drift import Texts, embed, last_user_turn
from tuneloop.recipes import load_recipe
from tuneloop.registry.promotion import _version_file
from tuneloop.serve import traffic


def window(monitor: Monitor) -> Texts:
    """The newest `max_requests` successful requests of the window, with their answers."""

    logged, skipped = traffic.read(model=monitor.window.model, since=monitor.window.since)
    logged = logged[-monitor.window.max_requests :]
    texts = Texts([last_user_turn(r.prompt) for r in logged], [r.output for r in logged])
    texts.meta.update(
        skipped=skipped,
        since=logged[0].ts.isoformat() if logged else None,
        until=logged[-1].ts.isoformat() if logged else None,
        versions=sorted({r.version for r in logged if r.version}),
    )
    return texts


def reference(recipe: Recipe, recipe_path: Path, monitor: Monitor, say: Callable[[str], None] = print) -> Texts:
    """The reference rows, a seeded sample of at most `reference.max_rows`; `meta["what"]` says where they came
    from (shown in the report)."""
    ref = monitor.reference
    if ref.from_ == "traffic":
        logged, _ = traffic.read(model=monitor.window.model, since=ref.since, until=ref.until)
        texts = Texts([last_user_turn(r.prompt) for r in logged], [r.output for r in logged])
        texts.meta["what"] = f"served traffic from {ref.since} to {ref.until or 'now'}"
    else:
        source, base_dir, what = recipe, recipe_path.parent, "this recipe's training data"
        if ref.from_ == "champion":
            source, base_dir, what = _champion_recipe(monitor.model or _registered_name(recipe))
        texts = _training_texts(source, base_dir, say)
        texts.meta["what"] = what
    if not texts.prompts:
        raise TuneloopError(f"the monitor's reference ({texts.meta['what']}) has no rows")
    if len(texts.prompts) > ref.max_rows:
        keep = sorted(np.random.default_rng(monitor.seed).choice(len(texts.prompts), ref.max_rows, replace=False))
        texts = Texts(
            [texts.prompts[i] for i in keep],
            None if texts.outputs is None else [texts.outputs[i] for i in keep],
            texts.meta,
        )
    return texts


def _registered_name(recipe: Recipe) -> str:
    assert recipe.registry is not None, "validated: a monitor without `model` needs `registry`"
    return recipe.registry.name


def _champion_recipe(name: str) -> tuple[Recipe, Path, str]:

    try:
        mv = get_version(f"models:/{name}@champion")
    except TuneloopError as e:
        raise TuneloopError(
            f"the monitor compares traffic with the training data of {name}@champion, and there is none ({e}); "
            "promote a version, or set `monitor.reference.from: recipe`"
        ) from e
    recipe_file = _version_file(name, str(mv.version), "recipe.yaml")
    if recipe_file is None:
        raise TuneloopError(f"{name}/{mv.version} (@champion) has no registered recipe.yaml to read its data from")
    recorded = (mv.tags or {}).get("tuneloop.recipe_path")
    base_dir = Path(recorded).parent if recorded and Path(recorded).parent.is_dir() else Path.cwd()
    return load_recipe(recipe_file, base_dir=base_dir), base_dir, f"training data of {name}/{mv.version} (@champion)"


def _training_texts(recipe: Recipe, base_dir: Path, say: Callable[[str], None]) -> Texts:
    """Prompts and answers of the first stage's training split, as the trainer saw them (formatted, capped)."""

    stage = recipe.stages[0]
    data = load_data(recipe.stage_data(stage), base_dir, method=stage.method, say=say).train
    prompts: list[str] = []
    outputs: list[str] | None = []
    for row in data:
        if "messages" in row:
            turns = row["messages"]
            prompts.append(last_user_turn(turns))
            answers = [t["content"] for t in turns if t.get("role") == "assistant"]
            outputs.append(answers[-1] if answers else "")
        elif "prompt" in row:
            prompts.append(last_user_turn(row["prompt"]))
            answer = row.get("completion", row.get("chosen"))
            if answer is None:
                outputs = None
            elif outputs is not None:
                outputs.append(answer if isinstance(answer, str) else last_assistant_turn(answer))
        else:  # language modelling text: the prompt is the whole text, there is no answer to compare
            prompts.append(str(row.get("text", "")))
            outputs = None
    return Texts(prompts, outputs)


def last_assistant_turn(turns: Any) -> str:
    answers = [t.get("content", "") for t in turns or [] if isinstance(t, dict) and t.get("role") == "assistant"]
    return answers[-1] if answers else ""


_SEEN: dict[str, np.ndarray] = {}  # prompt -> embedding, for the checks of one process (`monitor --watch`)
SEEN_MAX = 20_000  # ~30 MB of 384-float vectors


def window_embeddings(texts: list[str]) -> np.ndarray:
    """Embeddings of a window's prompts, each prompt embedded once per process: a watch loop's windows overlap
    (the last hour, every few minutes), so each check embeds only the requests that arrived since the last one."""
    new = list(dict.fromkeys(t for t in texts if t not in _SEEN))
    if new:
        if len(_SEEN) + len(new) > SEEN_MAX:
            _SEEN.clear()
        _SEEN.update(zip(new, embed(new), strict=True))
    return np.stack([_SEEN[t] for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)


def embeddings(texts: list[str]) -> np.ndarray:
    """Embeddings of `texts`, cached on disk by their content: a watch loop re-reads the same reference every
    few minutes, and embedding 2,000 prompts takes a minute on a CPU."""
    key = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:24]
    cache = workspace.home() / "monitor" / "embeddings" / f"{key}.npy"
    if cache.is_file():
        found = np.load(cache)
        if len(found) == len(texts):
            return found
    emb = embed(texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, emb)
    tmp.replace(cache)
    return emb
