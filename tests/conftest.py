"""Shared fixtures: a tiny random Llama with a tiny tokenizer (no network), an isolated workspace, recipe files."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from tuneloop import workspace as _workspace

# pytest-xdist's workers get COLUMNS=80, and rich fixes a console's width when it is created (tuneloop's are created
# at import): tests that print tables with `env={"COLUMNS": "200"}` would get 80-column tables under `-n 2` only
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)
# Under `-n 2` on 2 cores, two workers each running torch on 2 OpenMP threads spin 4 threads on 2 cores: greedy
# generation that takes 14 s alone took 82 s beside a second such process, and 26 s each at one thread apiece. So a
# worker gets its share of the cores, and the subprocesses its tests start (tuneloop run, servers) inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))

REPO = Path(__file__).resolve().parents[1]
# the converted built-in models, in the user-level cache `make model` filled (read-only for tests, shared by them)
SHARED_MODELS = _workspace.models_dir()
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(out: Path, layers: int = 2, hidden: int = 32) -> Path:
    """A randomly initialised Llama (~100k parameters) and a byte-level BPE tokenizer trained on Debian text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = []
    with (REPO / "data/debian-descriptions/validation.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            texts += [row["description"], row["synopsis"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first, each file's tests in their written order.

    `make test` gives pytest-xdist whole files (`--dist loadfile --no-loadscope-reorder`). Its default order, most
    tests first, started the minutes-long cluster and server files after 500 quick unit tests, so one worker often
    finished a long file alone. tests/durations.json holds seconds per file from a measured run
    (scripts/test_durations.py); a file not in it counts as a minute, so a new file is not left for last."""
    known = json.loads((REPO / "tests/durations.json").read_text())
    first = {}
    for i, item in enumerate(items):
        first.setdefault(item.path, i)

    def weight(item: pytest.Item) -> tuple[float, int]:
        relative = item.path.relative_to(REPO).as_posix()
        return -known.get(relative, 60.0), first[item.path]

    items.sort(key=weight)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch) -> Path:
    """Every test gets its own TUNELOOP_HOME; the user-level model cache (the converted built-in model) is shared,
    read-only."""
    home = tmp_path / "ws"
    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # tracking goes to the test's own workspace store; W&B never finds a key (tests of it run offline)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "WANDB_API_KEY", "WANDB_MODE", "TUNELOOP_USER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return home


@pytest.fixture
def write(tmp_path):
    """write("name.yaml", text) -> path; dedents so recipes can be written inline."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return _write


TINY_RECIPE = """
name: {name}
base_model: {model}
data: {{source: debian-descriptions, task: synopsis, max_train_rows: 16, max_eval_rows: 8}}
stages:
  - name: sft
    method: sft
    {peft}args: {{learning_rate: {lr}, max_steps: 3, per_device_train_batch_size: 4, max_length: 512,
           logging_steps: 1, save_steps: 100}}
evaluation:
  tasks:
    - {{name: ppl, kind: perplexity, split: validation, max_rows: 8}}
{extra_tasks}  gate:
    - {{metric: perplexity, {gate}}}
{tail}"""


@pytest.fixture
def tiny_recipe(write, tiny_model):
    """A recipe that trains the tiny model for 3 steps in seconds and gates on held-out perplexity, which those
    steps lower reliably (so `max_drop: 0` passes for a trained model and fails for one with learning_rate 0)."""

    def _recipe(
        name: str = "tiny",
        *,
        lr: float = 1e-3,
        gate: str = "max_drop: 0",
        registry: bool = True,
        model: str | None = None,
        lora: bool = False,
        generation: bool = False,
        tail: str = "",
        file: str | None = None,
        merged: bool = False,
    ) -> Path:
        extra = (
            "    - {name: synopsis, split: test, max_rows: 4, metrics: [rougeL, bleu], "
            "generation: {max_new_tokens: 8}}\n"
            if generation
            else ""
        )
        text = TINY_RECIPE.format(
            name=name,
            model=model or tiny_model,
            lr=lr,
            gate=gate,
            peft="peft: {type: lora, r: 4, alpha: 8}\n    " if lora else "",
            extra_tasks=extra,
            tail=(f"registry: {{name: {name}, merged: {str(merged).lower()}}}\n" if registry else "") + tail,
        )
        return write(file or f"{name}.yaml", text)

    return _recipe
