"""Explainers: classes whose `explain(neuron)` describes a neuron, registered in
harness.components' EXPLAINERS and built by `make_explainer`.

An explainer sees only a neuron's `explain` split. `calibration` may be used to choose among
candidate explanations (n samples, hypothesis_loop), through the run's judge; `test` is never seen.

The `llm` explainer combines an LLM backend (its `llm:` block, `conf/explainer/`) with a prompt
variant (`conf/prompt/`): one small class here with `messages(neuron)` and `parse(text)`.
`hypothesis_loop` is an explainer of its own that holds its conversation with its LLM. The shared
types (`Explanation`, `Explainer`, `Judge`) live in the leaf module `harness.types`.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from harness.components import EXPLAINERS, PROMPTS, RunContext
from harness.errors import ConfigError, ExplanationError, HarnessError
from harness.formatting import EXPLAINER_SHOTS, highlighted_text, token_lines
from harness.records import ActivationRecord, NeuronRecord
from harness.types import Explainer, Explanation, Judge  # re-exported: callers import them from here

log = logging.getLogger(__name__)


# --- Choosing and formatting records (harness.formatting writes them) --------------------------

def _tops(neuron: NeuronRecord, n: int) -> list[ActivationRecord]:
    return [r for r in neuron.explain if r.kind == "top"][:n]


def _explain_max(neuron: NeuronRecord) -> float:
    return max((r.max_activation for r in neuron.explain), default=0.0)


def _bulleted(neuron: NeuronRecord, records: list[ActivationRecord]) -> str:
    """One line per record, tokens at half the neuron's max or above in [[brackets]]."""
    threshold = 0.5 * _explain_max(neuron)
    return "\n".join(f"- {highlighted_text(r, threshold)}" for r in records)


# --- Prompt variants --------------------------------------------------------------------------

SYSTEM = ("You are helping to interpret neurons of a language model. A neuron reads text one token at a "
          "time and takes an activation at each token. Looking at where a neuron is active, you write a "
          "short, precise description of what makes it fire: which tokens, in which contexts. Be concrete; "
          "do not list every example.")

ENDING = "the main thing this neuron does is find"


def _clean_sentence(text: str) -> str | None:
    text = text.strip().strip('"').strip()
    if text.lower().startswith(ENDING):
        text = text[len(ENDING):].strip()
    text = text.split("\n")[0].strip().rstrip(".").strip()
    return text or None


@dataclass
class OpenAITokens:
    """Records as `token<TAB>activation` lines on the 0–10 scale, our few-shot examples, and a
    completion of "the main thing this neuron does is find"."""

    max_records: int = 10

    def messages(self, neuron: NeuronRecord) -> list[dict[str, str]]:
        shots = []
        for i, (record, answer) in enumerate(EXPLAINER_SHOTS, 1):
            shots.append({"role": "user", "content": f"Neuron {i}\nActivations:\n{token_lines([record])}\n\n"
                                                     f"Complete: {ENDING} ..."})
            shots.append({"role": "assistant", "content": f"{ENDING} {answer}."})
        ask = (f"Neuron {len(EXPLAINER_SHOTS) + 1}\nActivations:\n{token_lines(_tops(neuron, self.max_records))}\n\n"
               f"Complete: {ENDING} ...")
        return [{"role": "system", "content": SYSTEM}, *shots, {"role": "user", "content": ask}]

    def parse(self, text: str) -> str | None:
        return _clean_sentence(text)


@dataclass
class TopTokens:
    """A compact summary: the most activating tokens with counts and a short context each."""

    n_tokens: int = 15
    context: int = 6  # tokens of context before each example

    def messages(self, neuron: NeuronRecord) -> list[dict[str, str]]:
        max_a = _explain_max(neuron)
        stats: dict[str, list] = defaultdict(lambda: [0, 0.0, ""])  # token → [count, max, context]
        for r in neuron.explain:
            for i, (t, a) in enumerate(zip(r.tokens, r.activations)):
                if max_a > 0 and a >= 0.5 * max_a and t.strip():
                    s = stats[t.strip()]
                    s[0] += 1
                    if a > s[1]:
                        s[1], s[2] = a, "".join(r.tokens[max(0, i - self.context):i]) + f"[[{t}]]"
        ranked = sorted(stats.items(), key=lambda kv: kv[1][1], reverse=True)[: self.n_tokens]
        lines = "\n".join(f'- "{tok}": {count}x, peak {10 * peak / max_a:.0f}/10, e.g. …{ctx}'
                          for tok, (count, peak, ctx) in ranked)
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Tokens where the neuron is most active (counts over its top texts, peak "
                                            f"on a 0-10 scale, an example context):\n{lines}\n\nIn one sentence: "
                                            f"{ENDING} ..."}]

    def parse(self, text: str) -> str | None:
        return _clean_sentence(text)


@dataclass
class Contrastive:
    """Top windows next to low/zero-activation windows: what separates them?"""

    n_top: int = 6
    n_low: int = 6

    def messages(self, neuron: NeuronRecord) -> list[dict[str, str]]:
        top = _tops(neuron, self.n_top)
        low = sorted((r for r in neuron.explain if r.kind == "random"), key=lambda r: r.max_activation)[: self.n_low]
        fmt = lambda rs: _bulleted(neuron, rs)  # noqa: E731
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Texts where the neuron fires (strongest tokens in [[brackets]]):\n{fmt(top)}\n\n"
                                            f"Texts where it stays near zero:\n{fmt(low)}\n\nWhat separates the first "
                                            f"group from the second? In one sentence: {ENDING} ..."}]

    def parse(self, text: str) -> str | None:
        return _clean_sentence(text)


@dataclass
class ChainOfThought:
    """Reason first, then a final line `Explanation: ...` that is parsed out."""

    max_records: int = 8

    def messages(self, neuron: NeuronRecord) -> list[dict[str, str]]:
        texts = _bulleted(neuron, _tops(neuron, self.max_records))
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Texts where the neuron fires (strongest tokens in [[brackets]]):\n{texts}\n\n"
                                            "Think step by step about what the marked tokens share. Then end with one "
                                            "line of the form\nExplanation: <what the neuron finds>"}]

    def parse(self, text: str) -> str | None:
        found = re.findall(r"explanation\s*:\s*(.+)", text, flags=re.IGNORECASE)
        return _clean_sentence(found[-1]) if found else None


# --- LLM explainers ---------------------------------------------------------------------------

class LLMExplainer:
    """One prompt variant against one LLM; n samples per neuron, the kept one chosen on the
    calibration split by `judge`. Malformed or empty output is retried once, then a failure."""

    def __init__(self, llm, prompt, sampling: dict[str, Any], judge: Judge | None):
        self.llm, self.prompt, self.sampling, self.judge = llm, prompt, dict(sampling), judge

    def explain(self, neuron: NeuronRecord) -> Explanation:
        result = self.explain_batch([neuron])[0]
        if isinstance(result, HarnessError):
            raise result
        return result

    def explain_batch(self, neurons: list[NeuronRecord]) -> list[Explanation | HarnessError]:
        conversations = [self.prompt.messages(n) for n in neurons]
        out: list[Explanation | HarnessError | None] = [None] * len(neurons)
        pending = list(range(len(neurons)))
        for attempt in range(2):
            extra = {"retry": attempt} if attempt else {}
            results = self.llm.chat_batch([conversations[i] for i in pending], **self.sampling, extra=extra)
            still = []
            for i, result in zip(pending, results):
                if isinstance(result, HarnessError):
                    out[i] = result
                    continue
                prior_cost = out[i].cost_usd if isinstance(out[i], Explanation) else 0.0
                candidates = [c for c in (self.prompt.parse(t) for t in result.texts) if c]
                if candidates:
                    out[i] = self._choose(neurons[i], candidates, result.texts, prior_cost + result.cost_usd)
                else:
                    out[i] = Explanation(text="", raw="\n---\n".join(result.texts), cost_usd=prior_cost + result.cost_usd)
                    still.append(i)
            pending = still
            if not pending:
                break
        for i in pending:
            out[i] = ExplanationError(f"explainer output was empty or malformed twice; last output: "
                                      f"{out[i].raw[:200]!r}")
        return out

    def _choose(self, neuron: NeuronRecord, candidates: list[str], raw: list[str], cost: float) -> Explanation:
        if len(candidates) == 1 or self.judge is None:
            return Explanation(text=candidates[0], raw=raw[0], cost_usd=cost)
        scored = [(self.judge(neuron, c), c) for c in candidates]
        best = max(scored, key=lambda sc: -math.inf if math.isnan(sc[0]) else sc[0])
        return Explanation(text=best[1], raw="\n---\n".join(raw), cost_usd=cost,
                           details={"samples": [{"text": c, "calibration_score": s} for s, c in scored]})


class HypothesisLoop:
    """Propose K binary-condition hypotheses, score each on the calibration split with the run's
    judge (the cell's simulator and first scorer), refine the best for R rounds; the best on
    calibration is kept."""

    def __init__(self, llm, sampling: dict[str, Any], judge: Judge | None, k: int = 4, rounds: int = 2,
                 max_records: int = 8):
        if judge is None:
            raise ConfigError("explainer=hypothesis_loop needs a judge to score hypotheses on the calibration split "
                              "(a cell's simulator and first scorer): run it in a cell, or give RunContext(judge=...)")
        self.llm, self.sampling, self.judge = llm, dict(sampling), judge
        self.k, self.rounds, self.max_records = k, rounds, max_records

    def _ask(self, neuron: NeuronRecord, extra: str) -> tuple[list[str], float]:
        texts = _bulleted(neuron, _tops(neuron, self.max_records))
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Texts where the neuron fires (strongest tokens in [[brackets]]):\n"
                                                f"{texts}\n\n{extra}\nWrite exactly {self.k} hypotheses, one per line, "
                                                "each a yes/no condition on a token, like:\n1. the token is a weekday name\n"
                                                "2. the token closes a parenthesis"}]
        result = self.llm.chat(messages, **self.sampling)
        if isinstance(result, HarnessError):
            raise result
        numbered = [re.sub(r"^\s*\d+[.)]\s*", "", ln).strip().rstrip(".")
                    for ln in result.texts[0].splitlines() if re.match(r"^\s*\d+[.)]", ln)]
        return [h for h in numbered if h][: self.k], result.cost_usd

    def explain(self, neuron: NeuronRecord) -> Explanation:
        tried: list[dict[str, Any]] = []
        cost = 0.0
        extra = "Propose hypotheses about what makes this neuron fire."
        for round_ in range(self.rounds + 1):
            hypotheses, c = self._ask(neuron, extra)
            cost += c
            for h in hypotheses:
                tried.append({"round": round_, "text": h, "calibration_score": self.judge(neuron, h)})
            ok = [t for t in tried if not math.isnan(t["calibration_score"])]
            if not ok:
                continue
            best = max(ok, key=lambda t: t["calibration_score"])
            extra = (f"The best hypothesis so far is \"{best['text']}\" (score {best['calibration_score']:.2f} on "
                     "held-out text; 1 is perfect). Propose refined hypotheses that would score higher.")
        ok = [t for t in tried if not math.isnan(t["calibration_score"])]
        if not ok:
            raise ExplanationError(f"no hypothesis could be scored on the calibration split ({len(tried)} tried)")
        best = max(ok, key=lambda t: t["calibration_score"])
        return Explanation(text=best["text"], cost_usd=cost, details={"hypotheses": tried})


def make_explainer(cfg: Any, prompt_cfg: Any = None, context: RunContext | None = None) -> Explainer:
    """The explainer `cfg` names (its `kind` and parameters, checked and defaulted by its params class
    in harness/params.py), built by the one factory with the run's `context`: the cell's judge, an LLM
    for its model block behind the run's ledger and call cache, and, for one that reads the set's
    subject, the subject the run loaded. `kind: llm` also takes its prompt variant (`prompt_cfg`,
    conf/prompt/); baseline_borrowed the explainer its `source` names, built first."""
    params = _plain(cfg)
    kind = params.pop("kind", None)
    spec = EXPLAINERS.component(kind)
    checked = spec.parse(params, "explainer")
    context = context or RunContext()
    given: dict[str, Any] = {}
    if "llm" in checked:
        given["llm"] = context.llm(checked["llm"])
    if kind == "llm":
        prompt = _plain(prompt_cfg or {})
        given["prompt"] = PROMPTS.component(prompt.pop("kind", None)).build(prompt)
    if kind == "baseline_borrowed":
        if "llm" in EXPLAINERS.component(checked["source"].get("kind")).defaults():
            raise ConfigError("baseline_borrowed borrows from a no-LLM explainer; for LLM explainers "
                              "use the cell's own floor control (summary.json → floor)")
        given["source"] = make_explainer(checked["source"], context=context)
    if "subject" in checked:  # a weight baseline: the set's subject, unless it names another
        set_subject = ((context.manifest or {}).get("subject") or {}).get("name")
        if checked["subject"] in (None, set_subject):
            given["subject"] = context.subject()  # loaded once per run and digest-checked; without a set, a ConfigError
    return spec.build(checked, context, **given)


def _plain(cfg: Any) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
