"""Resolve a recipe's `base_model` to something `from_pretrained` accepts, and load model and tokenizer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuneloop.config.schema import ModelRef, Peft
from tuneloop.errors import TuneloopError
from tuneloop.models import builtin


class ModelLoadError(TuneloopError):
    """A model could not be loaded; the message says why in recipe terms, the cause keeps the library's error."""


def resolve(ref: ModelRef, base_dir: Path, log=print) -> str:
    """A local directory or hub id for `from_pretrained`; pulls the built-in model on first use, downloads a
    registered version (`models:/NAME@ALIAS`) once, as full weights (an adapter merged into its base)."""
    if ref.name.startswith("models:/"):
        from tuneloop.models.registered import full_model, materialize

        return str(full_model(materialize(ref.name, say=log)))
    if ref.name in builtin.BUILTIN_MODELS:
        if not builtin.is_pulled(ref.name):
            log(f"built-in model {ref.name} is not in the model cache {builtin.path(ref.name)}; converting it once")
            builtin.pull(ref.name, log=log)
        return str(builtin.path(ref.name))
    local = Path(ref.name).expanduser()
    for candidate in (local, base_dir / local):
        if candidate.is_dir():
            return str(candidate.resolve())
    return ref.name


def provenance(ref: ModelRef, source: str) -> dict[str, Any]:
    """What a run started from, for lineage: the reference as written, the registered version it resolved to,
    and the weights' SHA-256 (a hub model: the commit of the cached snapshot)."""
    import json

    info: dict[str, Any] = {"ref": ref.name, "revision": ref.revision, "path": source}
    if ref.name.startswith("models:/"):
        from tuneloop.models.registered import registered_from

        found = registered_from(source)
        if found:
            info["registry"] = f"{found['name']}/{found['version']}"
    if ref.name in builtin.BUILTIN_MODELS:
        marker = builtin.path(ref.name) / builtin.MARKER
        info["sha256"] = json.loads(marker.read_text()).get("weights_sha256") if marker.is_file() else None
    elif Path(source).is_dir():
        from tuneloop.models.references import weights_sha256

        info["sha256"] = weights_sha256(source)
    else:
        info["commit"] = _hub_commit(ref)
    return info


def _hub_commit(ref: ModelRef) -> str | None:
    """The commit of the snapshot the hub cache holds for this model (its directory is named after it)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(ref.name, "config.json", revision=ref.revision)
    except Exception:
        return None
    if isinstance(found, str) and "/snapshots/" in found:
        return found.split("/snapshots/")[1].split("/")[0]
    return None


def load_tokenizer(source: str, ref: ModelRef, base_dir: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, revision=ref.revision, trust_remote_code=ref.trust_remote_code)
    except OSError as e:
        raise ModelLoadError(f"cannot load the tokenizer of {ref.name!r}: {e}") from e
    if ref.chat_template:
        path = Path(ref.chat_template).expanduser()
        tok.chat_template = (path if path.exists() else base_dir / path).read_text()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def shrink_config(config: Any) -> Any:
    """The same architecture, scaled down to a few hundred thousand parameters (for --smoke runs)."""
    small = {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 4,
    }
    for key, value in small.items():
        if hasattr(config, key) and getattr(config, key) is not None:
            setattr(config, key, value)
    return config


def quantization_config(peft: Peft | None):
    """bitsandbytes' 4-bit NF4 config for a `qlora` stage. It quantizes on CPU too (bitsandbytes >= 0.49); compute
    runs in bf16 where a GPU supports it and in float32 elsewhere (CPU bf16 matmuls are slow or missing)."""
    if peft is None or peft.type != "qlora":
        return None
    import torch

    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as e:
        raise ModelLoadError(
            f"peft.type qlora needs the bitsandbytes package (`make install` brings it; `pip install "
            f"'tuneloop[gpu]'` on GPU machines): {e}"
        ) from e
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=peft.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=peft.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
    )


def load_model(source: str, ref: ModelRef, qlora: Peft | None = None, reward_head: bool = False):
    """Load the causal LM a stage trains, as the recipe asks (dtype, attention kernel; 4-bit when `qlora`).

    `reward_head` loads the same checkpoint as a sequence classifier with one output (a new, randomly
    initialised `score` head over the last token): the shape of a TRL reward model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"revision": ref.revision, "trust_remote_code": ref.trust_remote_code}
    kwargs["dtype"] = "auto" if ref.dtype == "auto" else getattr(torch, ref.dtype)
    if ref.attn_implementation:
        kwargs["attn_implementation"] = ref.attn_implementation
    quant = quantization_config(qlora)
    if quant is not None:
        import os

        kwargs["quantization_config"] = quant
        # each DDP rank holds its own 4-bit copy on its own GPU
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))} if torch.cuda.is_available() else "cpu"
    try:
        if reward_head:
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, **kwargs)
            if model.config.pad_token_id is None:  # the score is read at the last non-padding token
                model.config.pad_token_id = model.config.eos_token_id
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise ModelLoadError(f"cannot load model {ref.name!r} from {source!r}: {e}") from e
    return prepare_4bit(model) if quant is not None else model


def prepare_4bit(model: Any) -> Any:
    """Make a 4-bit model trainable and prove it is 4-bit: peft's k-bit preparation (norms in float32, input
    gradients), and the CPU repacking trap disarmed.

    On CPUs with AVX512-BF16, bitsandbytes repacks a Linear4bit's weights for a faster kernel at the first no-grad
    forward (an evaluation pass, a generation); that kernel has no backward, and later training steps then get LoRA
    gradients wrong by up to 81% with only a UserWarning (measured, DESIGN.md "Facts"). Turning the repacking off
    on every layer keeps evaluation and training on the same, differentiable kernel."""
    from bitsandbytes.nn import Linear4bit
    from peft import prepare_model_for_kbit_training

    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    if not layers:
        raise ModelLoadError(
            "peft.type qlora: the model loaded without a single 4-bit layer (bitsandbytes fell back); "
            "refusing to train plain LoRA under a QLoRA recipe"
        )
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def memory_footprint(model: Any) -> int:
    """Bytes the model's parameters and buffers take in this process: 4-bit layers count packed, a ZeRO-3 rank
    counts its own partition."""
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        part = getattr(tensor, "ds_tensor", None)
        total += (part if part is not None else tensor).nbytes
    return total


def load_reward_model(source: str) -> Any:
    """A reward model (sequence classifier with one output) from a local path, adapters folded in, in eval mode."""
    from transformers import AutoModelForSequenceClassification

    try:
        if (Path(source) / "adapter_config.json").is_file():
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(source, num_labels=1).merge_and_unload()
        else:
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load reward model from {source!r}: {e}") from e
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model.eval()


def load_reference(name: str, base_dir: Path, like: ModelRef, log=print):
    """A model a stage names besides the one it trains (reference, teacher, reward model), with the base
    model's loading settings; an adapter directory is folded into its base."""
    ref = like.model_copy(update={"name": name, "revision": None, "chat_template": None})
    source = resolve(ref, base_dir, log=log)
    if (Path(source) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(source).merge_and_unload()
    return load_model(source, ref)


def tiny_copy(source: str, ref: ModelRef, out: Path, seed: int) -> str:
    """Save a randomly initialised, scaled-down model of the same architecture with the same tokenizer.

    `--smoke` trains this instead of the real model. It is a real checkpoint on disk, so every later step
    (adapters that name their base, merging between stages, saving) runs exactly as in a full run.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, set_seed

    if (out / "config.json").exists():
        return str(out)
    common = {"revision": ref.revision, "trust_remote_code": ref.trust_remote_code}
    try:
        config = shrink_config(AutoConfig.from_pretrained(source, **common))
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except OSError as e:
        raise ModelLoadError(f"cannot read the config of {ref.name!r} from {source!r}: {e}") from e
    set_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@contextmanager
def outside_zero3() -> Iterator[None]:
    """Load a whole model in this process alone while a ZeRO-3 run is active (rank 0 merging an adapter between
    stages). transformers builds every model inside `zero.Init` while a ZeRO-3 config is registered, and that
    partitioning is a collective the other ranks never join: the rank would hang."""
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def merge_adapter(adapter_dir: Path, out: Path) -> Path:
    """Fold a LoRA adapter into its base and save full weights with the tokenizer (and the training record, so
    the chat-template guard still applies); done once: an existing merge is reused."""
    import shutil

    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    if (out / "config.json").is_file():
        return out
    with outside_zero3():
        AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir)).merge_and_unload().save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(out))
    record = adapter_dir / "tuneloop-train.json"
    if record.is_file():
        shutil.copy2(record, out / record.name)
    return out


def param_count(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    # under ZeRO-3 a sharded parameter has numel() == 0; DeepSpeed keeps the real size in ds_numel
    sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in model.parameters()]
    total = sum(n for n, _ in sizes)
    trainable = sum(n for n, grad in sizes if grad)
    return trainable, total


def kept_layers(spec: str | list[int], layers: int) -> list[int]:
    """The decoder layers a student keeps: `every_N` → layers/N of them evenly spaced with the first and the last
    (the two that matter most: input embedding side and output head side), or an explicit list."""
    if isinstance(spec, list):
        outside = [i for i in spec if i >= layers]
        if outside:
            raise ModelLoadError(f"student.keep_layers: layers {outside} do not exist; the teacher has {layers}")
        return spec
    every = int(spec.removeprefix("every_"))
    count = max(1, -(-layers // every))  # ceil: 30 layers, every_2 → 15
    if count == 1:
        return [layers - 1]
    return sorted({round(k * (layers - 1) / (count - 1)) for k in range(count)})


def drop_layers(model: Any, keep: list[int]) -> Any:
    """Keep only the listed decoder layers of a causal LM, in place, renumbered so the KV cache indexes them."""
    import torch

    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelLoadError(
            f"student.keep_layers: {type(model).__name__} keeps its decoder layers somewhere other than "
            "`.layers`; give the student as a model (`student: {from: MODEL}`) instead"
        )
    decoder.layers = torch.nn.ModuleList(layers[i] for i in keep)
    for new, layer in enumerate(decoder.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    config = model.config.get_text_config()
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return model


def quiet_libraries() -> None:
    """Our progress bar and summary replace the per-step bars of datasets and transformers."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()
