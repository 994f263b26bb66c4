"""Detection and fuzzing: a judge model classifies whole test windows against an explanation.

The idea is EleutherAI delphi's classification scorers (Paulo et al. 2024, "Automatically
interpreting millions of features in large language models"), which replace Bills et al. 2023's
token-level simulation by yes/no questions:
- *detection*: does this text contain what the explanation describes?
- *fuzzing*: some tokens of the text are marked; are the marked tokens what it describes? Positive
  windows mark their truly active tokens, negative windows as many randomly chosen tokens, so the
  judge must read the marked tokens, not merely the topic of the text.

Labels. Every window of `neuron.test` (top, random and quantile, as the split holds them) is labelled
by `harness.scoring.windows.window_labels`: active when its maximum activation is strictly above the
threshold `active` names (`max50` by default; `q<P>` thresholds are fitted on calibration), as the
threshold scorer binarises tokens. Fuzzing marks, in active windows, the tokens above that threshold.

P(yes). The judge answers `yes`/`no` (one window per prompt) or one line `N: yes|no` per window
(`windows_per_prompt` > 1, numbered windows, shuffled per neuron so a prompt does not hold only top
or only random windows). The answer text is parsed strictly (`parse`: its first lines must be exactly
that; a comment after a complete answer is ignored) and decides whether a slot was answered and the
model's own decision; its P(yes) is read from the answer token's logprobs where the backend gives them:
1. its top alternatives (hf_local; openai / openai_compatible with `top_logprobs`): the probability
   mass of the yes-tokens over that of the yes- and no-tokens (any case, any surrounding space);
2. only the sampled token's logprob (Chat Completions without `top_logprobs`): exp(logprob) for a
   sampled yes, 1 − exp(logprob) for a sampled no;
3. no logprobs (anthropic, servers that give none) or a token that cannot be aligned with the
   answer text: the sampled answer, 1.0 or 0.0.
`read_from` counts the slots read each way.

Malformed is not "no". An answer (or, packed, a window's line) that does not parse, and a request
that failed for good, is a *failed slot*: counted in `slots` / `failed_slots` and left out of the
metrics. Reading it as "no" would turn a judge that cannot follow the format into a judge with a
perfect false-positive rate. An outage (TransientLLMError) is not a result and is raised.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from typing import Any

import numpy as np
from tqdm import tqdm

from harness.errors import ConfigError, HarnessError, TransientLLMError
from harness.formatting import escaped
from harness.records import ActivationRecord, NeuronRecord
from harness.scoring.threshold import auroc, balanced_accuracy, f1
from harness.scoring.windows import active_fraction, threshold_value, window_labels

log = logging.getLogger(__name__)

# Metric names, each with its no-information value (what a judge that ignores the window scores):
# auroc 0.5 and balacc 0.5; precision, recall, f1 and fpr have none (they move with the judge's
# bias towards "yes" and, for precision, with the share of active windows).
METRICS = ("auroc", "balacc", "precision", "recall", "f1", "fpr", "failed_fraction")

_YES, _NO = "yes", "no"
_ONE = re.compile(r"(yes|no)[.!]?", re.IGNORECASE)
_LINE = re.compile(r"(\d{1,4})\s*:\s*(.*)")


def parse(text: str, k: int) -> list[tuple[bool, int] | None]:
    """Per window of a prompt with `k` windows: (answered yes, offset of the answer word in `text`),
    or None for a failed slot. The answer is its first k non-blank lines; what follows them (a
    model's comment on a complete answer) is ignored. k = 1: the line is `yes` or `no` (any case, a
    trailing . or !). k > 1: each line is `N: yes|no`; a line of another form, or a number outside
    1..k, fails every slot (the lines cannot be assigned); a number missing, repeated or not answered
    yes/no fails its slot."""
    lines, offset = [], 0
    for line in text.splitlines(keepends=True):
        if line.strip() and len(lines) < k:
            lines.append((offset + line.index(line.strip()), line.strip()))
        offset += len(line)
    if k == 1:
        m = _ONE.fullmatch(lines[0][1]) if lines else None
        return [(m.group(1).lower() == _YES, lines[0][0]) if m else None]
    answers: dict[int, list[tuple[bool, int] | None]] = {}
    for at, body in lines:
        m = _LINE.fullmatch(body)
        if m is None or not 1 <= int(m.group(1)) <= k:
            return [None] * k
        word = _ONE.fullmatch(m.group(2))
        read = (word.group(1).lower() == _YES, at + m.start(2)) if word else None
        answers.setdefault(int(m.group(1)), []).append(read)
    return [answers[n][0] if len(answers.get(n, ())) == 1 else None for n in range(1, k + 1)]


def _answer_entry(tokens: list[dict[str, Any]], text: str, at: int) -> dict[str, Any] | None:
    """The generated token whose text begins the answer word at offset `at` of `text` (leading
    whitespace allowed), or None when the tokens do not spell `text` or no token starts there."""
    if "".join(t["token"] for t in tokens) != text:
        return None
    start = 0
    for t in tokens:
        end = start + len(t["token"])
        if start <= at < end:
            return t if not text[start:at].strip() else None
        start = end
    return None


def p_yes(entry: dict[str, Any] | None, said_yes: bool) -> tuple[float, str]:
    """P(yes) of one answer and how it was read ("top", "sampled" or "text"); see the module doc."""
    top = (entry or {}).get("top") or {}
    mass = {_YES: 0.0, _NO: 0.0}
    for token, lp in top.items():
        word = token.strip().lower()
        if word in (_YES, _NO) and isinstance(lp, (int, float)) and math.isfinite(lp):
            mass[word] += math.exp(min(lp, 0.0))
    if mass[_YES] + mass[_NO] > 0:
        return mass[_YES] / (mass[_YES] + mass[_NO]), "top"
    lp = (entry or {}).get("logprob")
    if entry is not None and entry["token"].strip().lower() == (_YES if said_yes else _NO) \
            and isinstance(lp, (int, float)) and math.isfinite(lp):
        p = math.exp(min(lp, 0.0))
        return (p if said_yes else 1.0 - p), "sampled"
    return float(said_yes), "text"


def _marked(token: str) -> str:
    lead = token[: len(token) - len(token.lstrip())]
    return f"{lead}<<{token.lstrip()}>>"


class WindowJudge:
    """Detection (`fuzz=False`) or fuzzing (`fuzz=True`) with the judge `llm` (a `harness.llm.LLM`,
    so calls go through its call cache and ledger). `sampling`: chat parameters (temperature 0 and
    logprobs on by default; `logprobs: false` for servers that refuse the parameter).
    `windows_per_prompt` > 1 packs numbered windows into one prompt. `active` names the label
    threshold (harness/scoring/windows.py). `seed` draws the negatives' marked tokens in fuzzing and
    the order windows are packed in, per neuron and window."""

    SYSTEM = ("You check explanations of what makes a neuron in a language model fire. You are given an "
              "explanation and text, and you judge whether the text contains what the explanation describes. "
              "Answer only in the format asked for.")
    SYSTEM_FUZZ = ("You check explanations of what makes a neuron in a language model fire. You are given an "
                   "explanation and text in which some tokens are marked <<like this>>, and you judge whether the "
                   "marked tokens are what the explanation describes. Answer only in the format asked for.")

    def __init__(self, llm, sampling: dict[str, Any] | None = None, windows_per_prompt: int = 1, fuzz: bool = False,
                 active: str = "max50", seed: int = 0):
        if isinstance(windows_per_prompt, bool) or not isinstance(windows_per_prompt, int) or windows_per_prompt < 1:
            raise ConfigError(f"windows_per_prompt must be a whole number ≥ 1; got {windows_per_prompt!r}")
        if not isinstance(fuzz, bool):
            raise ConfigError(f"fuzz must be true or false; got {fuzz!r}")
        active_fraction(active)  # a ConfigError for a name that is no threshold
        # About 4 tokens per answer line ("1", ":", " yes", "\n"): the budget ends a chatty model early.
        budget = 4 if windows_per_prompt == 1 else 6 * windows_per_prompt
        self.sampling = {"temperature": 0.0, "max_tokens": budget, "n": 1, "seed": 0, "logprobs": True,
                         **(sampling or {})}
        if self.sampling["n"] != 1:
            raise ConfigError(f"the judge reads one answer per prompt: sampling.n must be 1; "
                              f"got {self.sampling['n']!r}")
        self.llm, self.k, self.fuzz, self.active, self.seed = llm, windows_per_prompt, fuzz, active, seed
        self.slots = self.failed_slots = 0
        self.read_from = Counter()  # slots whose P(yes) came from "top", "sampled" or "text"

    # --- prompts ---------------------------------------------------------------------------------

    def marks(self, neuron: NeuronRecord, labels: np.ndarray) -> list[list[int]]:
        """Fuzzing: the marked token positions of each test window. Active windows: every token above
        the threshold. Inactive ones: as many random non-blank tokens (any token where all are blank)
        as the median active window marks, drawn from a generator seeded by (seed, layer, neuron,
        window), so the same set gets the same marks in every run."""
        t = threshold_value(neuron, self.active)
        active = [[i for i, a in enumerate(r.activations) if a > t] for r in neuron.test]
        counts = [len(m) for m, on in zip(active, labels) if on]
        n_marks = max(1, round(float(np.median(counts)))) if counts else 1
        out = []
        for w, (r, on) in enumerate(zip(neuron.test, labels)):
            if on:
                out.append(active[w])
                continue
            pool = [i for i, tok in enumerate(r.tokens) if tok.strip()] or list(range(len(r.tokens)))
            rng = np.random.default_rng([self.seed, neuron.layer, neuron.neuron, w])
            out.append(sorted(rng.choice(pool, size=min(n_marks, len(pool)), replace=False).tolist()))
        return out

    @staticmethod
    def text(record: ActivationRecord, marked: list[int] | None = None) -> str:
        """The window as one line: tokens joined, newlines and tabs escaped, marked tokens in <<…>>."""
        marked = set(marked or ())
        return escaped("".join(_marked(t) if i in marked else t for i, t in enumerate(record.tokens)))

    def messages(self, explanation: str, texts: list[str]) -> list[dict[str, str]]:
        what = "the marked tokens are what the explanation describes" if self.fuzz else \
            "the text contains what the explanation describes"
        if len(texts) == 1:
            body = (f"Text: {texts[0]}\n\nDecide whether {what}. Answer with one word, yes or no.")
        else:
            listed = "\n".join(f"{n}: {t}" for n, t in enumerate(texts, 1))
            body = (f"Texts:\n{listed}\n\nFor each text, decide whether {what}. Answer with exactly {len(texts)} "
                    f"lines, one per text in order, each the text's number, a colon and yes or no, "
                    f"for example \"1: no\".")
        return [{"role": "system", "content": self.SYSTEM_FUZZ if self.fuzz else self.SYSTEM},
                {"role": "user", "content": f"Explanation: {explanation.strip()}\n\n{body}"}]

    # --- scoring ---------------------------------------------------------------------------------

    def judge(self, items: list[tuple[NeuronRecord, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per (neuron, explanation): the test windows' labels and P(yes), NaN for a failed slot.
        The prompts of every item go out together (`chat_batch`, 64 at a time behind a progress bar),
        so a local model batches and API calls overlap."""
        prompts, where, labels = [], [], []  # where: (item, window indices of the prompt)
        for n, (neuron, explanation) in enumerate(items):
            y = window_labels(neuron, neuron.test, self.active)
            labels.append(y)
            marks = self.marks(neuron, y) if self.fuzz else [None] * len(neuron.test)
            order = np.random.default_rng([self.seed, neuron.layer, neuron.neuron]).permutation(len(neuron.test))
            for lo in range(0, len(order), self.k):
                ws = order[lo:lo + self.k].tolist()
                prompts.append(self.messages(explanation, [self.text(neuron.test[w], marks[w]) for w in ws]))
                where.append((n, ws))
        results = []
        chunk = 64  # prompts per call: large enough for a local model's batches and overlapping API calls
        with tqdm(total=len(prompts), desc="fuzzing" if self.fuzz else "detection", unit="prompt",
                  disable=len(prompts) <= chunk) as bar:
            for lo in range(0, len(prompts), chunk):
                results += self.llm.chat_batch(prompts[lo:lo + chunk], **self.sampling)
                bar.update(len(prompts[lo:lo + chunk]))
        p = [np.full(len(y), np.nan) for y in labels]
        for (n, ws), result in zip(where, results):
            if isinstance(result, TransientLLMError):
                raise result  # an outage: the cell stops incomplete (harness/cell.py)
            if isinstance(result, HarnessError):
                log.warning("window judge: a request of %d window(s) failed: %s", len(ws), result)
                continue
            text = result.texts[0]
            tokens = (result.logprobs or [[]])[0]
            for w, answer in zip(ws, parse(text, len(ws))):
                if answer is not None:
                    said_yes, at = answer
                    p[n][w], how = p_yes(_answer_entry(tokens, text, at) if tokens else None, said_yes)
                    self.read_from[how] += 1
        failed = sum(int(np.isnan(pn).sum()) for pn in p)
        self.slots += sum(len(y) for y in labels)
        self.failed_slots += failed
        if failed:
            log.warning("window judge: %d of %d slots failed so far (malformed answers or failed requests)",
                        self.failed_slots, self.slots)
        return list(zip(labels, p))

    def score(self, items: list[tuple[NeuronRecord, str]]) -> list[dict[str, float]]:
        """Per (neuron, explanation): the METRICS of its test windows. The model's own decision is
        P(yes) > 0.5; where P(yes) is the sampled answer (1.0 or 0.0) that is the answer itself."""
        out = []
        for y, p in self.judge(items):
            ok = ~np.isnan(p)
            out.append(metrics(y[ok], p[ok], p[ok] > 0.5, failed=int((~ok).sum())))
        return out


def metrics(labels: np.ndarray, p: np.ndarray, decided: np.ndarray, failed: int = 0) -> dict[str, float]:
    """The METRICS of the answered windows (`labels`, P(yes) `p`, decision `decided`) of one neuron
    with `failed` failed slots besides them. NaN where undefined: an empty class for auroc, balacc
    and fpr (no inactive window) and recall (no active one); no "yes" decision for precision."""
    tp = int((decided & labels).sum())
    fp = int((decided & ~labels).sum())
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    total = len(labels) + failed
    return {"auroc": auroc(labels, p),
            "balacc": balanced_accuracy(labels, decided),
            "precision": tp / (tp + fp) if tp + fp else math.nan,
            "recall": tp / n_pos if n_pos else math.nan,
            "f1": f1(labels, decided),
            "fpr": fp / n_neg if n_neg else math.nan,
            "failed_fraction": failed / total if total else math.nan}
