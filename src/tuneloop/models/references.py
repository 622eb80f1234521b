"""Model references, resolved: a built-in name, a local checkpoint or adapter, a hub id, a run directory, or a
registered version (`models:/NAME@ALIAS`). Evaluation, serving, the registry and training all resolve them here.

Also the guard users of other tools wish they had: a model fine-tuned by tuneloop records the chat template and
prompt format it was trained with, and evaluating it with a different one is an error, not a quiet score drop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.config.schema import Format, ModelRef
from tuneloop.errors import TuneloopError
from tuneloop.rundir import RunDir

TRAINING_RECORD = "tuneloop-train.json"


@dataclass
class EvalModel:
    ref: str  # what the user wrote
    path: str  # a directory or hub id that from_pretrained accepts
    adapter: bool  # a PEFT adapter directory (merged before generating)
    record: dict[str, Any] | None  # the training record, for models tuneloop trained


def resolve_model(ref: str, base_dir: Path, say=print) -> EvalModel:
    """Turn a model reference into something loadable; a run directory means the run's final model."""
    from tuneloop.models.loading import resolve

    if ref.startswith("models:/"):
        from tuneloop.models.registered import materialize, registered_from

        path = materialize(ref, say=say)
        found = registered_from(path) or {}
        say(f"{ref} is version {found.get('version')} of {found.get('name')} ({path})")
        return _local(ref, path)
    path = Path(ref).expanduser()
    run = RunDir.holding(path)
    if run is not None and not (path / "config.json").exists():
        model_dir = run.summary().model_dir
        say(f"{ref} is a run; evaluating its final model {model_dir}")
        path = Path(model_dir)
    elif path.is_dir() and not _loadable(path):
        raise TuneloopError(
            f"{ref} is a directory but holds no model (no config.json or adapter_config.json) and no run summary"
        )
    source = str(path.resolve()) if path.is_dir() else resolve(ModelRef(name=ref), base_dir, log=say)
    return _local(ref, Path(source))


def _local(ref: str, local: Path) -> EvalModel:
    adapter = (local / "adapter_config.json").is_file()
    record_file = local / TRAINING_RECORD
    record = json.loads(record_file.read_text()) if record_file.is_file() else None
    return EvalModel(ref, str(local), adapter, record)


def _loadable(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def load_for_eval(model: EvalModel) -> tuple[Any, Any]:
    """(model, tokenizer) ready to generate: float32 on CPU, adapters folded into their base."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model)
    try:
        if model.adapter:
            from peft import AutoPeftModelForCausalLM

            lm = AutoPeftModelForCausalLM.from_pretrained(model.path, dtype=_dtype()).merge_and_unload()
        else:
            lm = AutoModelForCausalLM.from_pretrained(model.path, dtype=_dtype())
    except OSError as e:
        raise TuneloopError(f"cannot load model {model.ref!r} from {model.path}: {e}") from e
    if torch.cuda.is_available():
        lm = lm.to("cuda")
    torch.manual_seed(0)
    return lm, tokenizer


def load_tokenizer(model: EvalModel) -> Any:
    """The tokenizer saved beside the model (its chat template is the one it was trained with)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model.path)
    except OSError as e:
        raise TuneloopError(f"cannot load the tokenizer of {model.ref!r} from {model.path}: {e}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def merged_dir(model: EvalModel) -> str:
    """A full checkpoint for engines that want one (vLLM): adapters are merged once and kept beside them."""
    if not model.adapter:
        return model.path
    from tuneloop.models.loading import merge_adapter

    return str(merge_adapter(Path(model.path), Path(model.path) / "merged"))


def _dtype():
    import torch

    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def sha256_text(text: str | None) -> str | None:
    """Hash of a chat template (or any text) for provenance; None for none."""
    return hashlib.sha256(text.encode()).hexdigest() if text else None


def weights_sha256(path: str) -> str | None:
    """Content hash of a local checkpoint's weight files (adapter or full), for the results' provenance."""
    local = Path(path)
    files = sorted(local.glob("*.safetensors")) or sorted(local.glob("*.bin"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def training_record(tokenizer: Any, fmt: Format | None, base_model: str, recipe: str, stage: str) -> dict[str, Any]:
    """What a trained model must be evaluated with; written next to its weights by every training stage."""

    return {
        "recipe": recipe,
        "stage": stage,
        "base_model": base_model,
        "chat_template_sha256": sha256_text(getattr(tokenizer, "chat_template", None)),
        "format": None if fmt is None else {"style": fmt.style, "system": fmt.system, "prompt": fmt.prompt},
    }


def check_template(model: EvalModel, template_sha: str | None, fmt: Format | None, task: str) -> None:
    """Refuse to score a fine-tuned model with a prompt layout other than the one it learned."""
    record = model.record
    if not record:
        return
    trained_sha = record.get("chat_template_sha256")
    if trained_sha and template_sha and trained_sha != template_sha:
        raise TuneloopError(
            f"task {task}: {model.ref} was trained with chat template sha256 {trained_sha[:12]}… but is being "
            f"evaluated with {template_sha[:12]}…; evaluate with the tokenizer saved beside the model "
            "(a different template silently lowers every score)"
        )
    trained_fmt = record.get("format")
    if trained_fmt is None or fmt is None:
        return
    for key in ("style", "system"):
        used = getattr(fmt, key)
        if trained_fmt.get(key) != used:
            raise TuneloopError(
                f"task {task}: {model.ref} was trained with format.{key}={trained_fmt.get(key)!r} but the task "
                f"uses {used!r}; evaluate with the training format (a recipe's tasks default to its own `data`)"
            )
