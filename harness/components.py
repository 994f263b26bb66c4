"""Components: the one way a plug-in is named, configured and built.

A component is registered once, in its group (`simulator`, `scorer`, `explainer`, `prompt`,
`backend`; and the kinds outside a cell's config: `subject_source`, `corpus`, `corruption`,
`gelu_variant`, `completion_form`), by name, with
- `params`: a frozen dataclass whose fields are its parameters (harness/params.py). Each field
  says, through `option(...)`, its default, the rule its value must satisfy (harness/rules.py) and
  whether a leaderboard entry may set it (`entry=True`). Nothing else lists parameters: the
  cell's checks, the leaderboard's allow-list and verification's rebuild are all read off them;
- `target`: what the component is, as "module:object", imported only when first used (a group
  never imports its plug-ins: no import cycles, no heavy import for an unused entry). A class is
  built as `target(**parameters, **resources)`;
- `resources`: what the class takes from the run (`RunContext`: the ledger, the call cache, the
  judge), by keyword.

`build(group, name, params, context)` is the one factory: it looks the name up, checks every
parameter (an unknown name or key is one ConfigError listing what is known), fills the defaults and
builds. The conf/<group>/*.yaml files are presets: each names a component and sets some of its
parameters, documented there for the person who sweeps them.

Adding a parameter to a simulator: add a field to its params class in harness/params.py, read it
in the simulator, and set or document it in conf/simulator/<kind>.yaml (docs/components.md walks
through one). An explainer is built the same way, through `harness.explain.make_explainer`, which
also hands it what it is built on (its prompt variant, an LLM for its model block, a source
explainer, the run's subject); a backend's params class gives only its default model block.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Iterator

from harness.errors import ConfigError
from harness.params import (AblationParams, AllAtOnceParams, AnthropicBlock, BorrowedParams, BrownParams,
                            ChainOfThoughtParams, ChatLogprobsParams, ContrastiveParams, EchoFormParams,
                            EmbeddingParams, EmptyParams, GGUFPartsParams, GGUFWheelParams, HFDatasetParams,
                            HFLocalBlock, HubParams, HypothesisLoopParams, JsonParams, JudgeParams,
                            LLMExplainerParams, NoParams, OneAtATimeParams, OpenAIBlock, OpenAICompatibleBlock,
                            OpenAITokensParams, PermuteParams, RandomInitParams, RepeatParams, SkipCountParams,
                            SkipParams, TextDirParams, ThresholdParams, TokenMatchParams, TopTokensBaselineParams,
                            TopTokensPromptParams, WeightTokensParams, required)
from harness.rules import Rule


# --- Components and groups ---------------------------------------------------------------------

def _resolve(target: Any) -> Any:
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    return target


@dataclass(frozen=True)
class Component:
    group: str
    name: str
    target: Any                      # "module:object" (imported on first use) or the object
    params: type = NoParams          # a dataclass of `option` fields
    resources: tuple[str, ...] = ()  # RunContext attributes the class takes by keyword
    on_board: bool = True            # whether a leaderboard entry may name it (its verifier can rebuild it)

    def resolve(self) -> Any:
        return _resolve(self.target)

    def defaults(self) -> dict[str, Any]:
        """Each parameter that has a default, with it (a fresh copy of a mutable one)."""
        return {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                for f in fields(self.params) if not required(f)}

    def entry_options(self) -> list[str]:
        """The parameters a leaderboard entry may set."""
        return [f.name for f in fields(self.params) if f.metadata.get("entry")]

    def entry_values(self, name: str) -> tuple | None:
        """The values an entry may give parameter `name` (one of `entry_options`); None: any."""
        return next(f.metadata.get("entry_values") for f in fields(self.params) if f.name == name)

    def rules(self, prefix: str) -> dict[str, Rule]:
        """Dotted option paths under `prefix` → their rule (a list's or mapping's items under `.*`)."""
        out: dict[str, Rule] = {}
        for f in fields(self.params):
            if f.metadata.get("rule"):
                out[f"{prefix}.{f.name}"] = f.metadata["rule"]
            if f.metadata.get("items"):
                out[f"{prefix}.{f.name}.*"] = f.metadata["items"]
        return out

    def unknown(self, params: dict[str, Any], where: str) -> list[str]:
        known = [f.name for f in fields(self.params)]
        return [f"unknown option {where}.{key} of {self.group} {self.name}; known: {known}"
                for key in params if key not in known]

    def parse(self, params: dict[str, Any] | None, where: str) -> dict[str, Any]:
        """Every parameter, the given ones over the defaults; one ConfigError naming each unknown
        key and each value that breaks its rule."""
        from harness.validation import option_problems

        params = dict(params or {})
        tree: dict[str, Any] = params
        for key in reversed(where.split(".")):  # the problems name each option by its full path
            tree = {key: tree}
        missing = [f"{where}.{f.name} is required: {f.metadata['rule'][1]}"
                   for f in fields(self.params) if required(f) and f.name not in params]
        problems = missing + self.unknown(params, where) + option_problems(tree, rules=self.rules(where))
        if problems:
            raise ConfigError(f"invalid {self.group} {self.name}: " + "; ".join(problems))
        given = {**self.defaults(), **params}
        return {f.name: given[f.name] for f in fields(self.params)}  # in field order

    def build(self, params: dict[str, Any] | None = None, context: "RunContext | None" = None, **given: Any) -> Any:
        """`given`: what the caller built for this component (an explainer's prompt variant, the LLM of
        its model block), passed by keyword, over the checked parameter of the same name if any."""
        kwargs = self.parse(params, self.group)
        context = context or RunContext()
        return self.resolve()(**{**kwargs, **{r: getattr(context, r) for r in self.resources}, **given})


class Group:
    """The components of one kind. `group[name]` is the component's object (for code that reads a
    class or descriptor); `group.component(name)` the Component; an unknown name is one ConfigError:
    "unknown <what> 'name'; known: [...]"."""

    def __init__(self, name: str, what: str, components: list[Component]):
        self.name, self.what = name, what
        self._components = {c.name: c for c in components}

    def component(self, name: Any) -> Component:
        if not isinstance(name, str) or name not in self._components:
            raise ConfigError(f"unknown {self.what} {name!r}; known: {sorted(self._components)}")
        return self._components[name]

    def __getitem__(self, name: Any) -> Any:
        return self.component(name).resolve()

    def __contains__(self, name: Any) -> bool:
        return name in self._components

    def __iter__(self) -> Iterator[str]:
        return iter(self._components)

    def __len__(self) -> int:
        return len(self._components)

    def __repr__(self) -> str:
        return f"Group({self.name!r}, {sorted(self._components)})"


def _group(name: str, what: str, entries: dict[str, tuple]) -> Group:
    return Group(name, what, [Component(name, n, *spec) for n, spec in entries.items()])


SIM = "harness.simulators"
SIMULATORS = _group("simulator", "simulator kind", {
    "token_match": (f"{SIM}.lexical:TokenMatchSimulator", TokenMatchParams),
    "oracle_quantized": (f"{SIM}.lexical:OracleQuantizedSimulator", NoParams, (), False),  # the ceiling control
    "all_at_once": (f"{SIM}.local:AllAtOnceSimulator", AllAtOnceParams, ("ledger",)),
    "one_at_a_time": (f"{SIM}.local:OneAtATimeSimulator", OneAtATimeParams),
    "json": (f"{SIM}.chat:JsonSimulator", JsonParams, ("ledger",)),
    # not on the board yet: no verifier re-reads a chat API's top logprobs within a tested tolerance
    "chat_logprobs": (f"{SIM}.chat:ChatLogprobsSimulator", ChatLogprobsParams, ("ledger",), False),
})
# A scorer's target is its `harness.scoring.Scorer` descriptor (metrics, headline, what it reads);
# its parameters reach the scoring function as keywords.
SCORERS = _group("scorer", "scorer", {
    "correlation": ("harness.scoring:CORRELATION", NoParams),
    "threshold": ("harness.scoring:THRESHOLD", ThresholdParams),
    "ablation": ("harness.scoring:ABLATION", AblationParams),
    "embedding": ("harness.scoring:EMBEDDING", EmbeddingParams),
    "detection": ("harness.scoring:DETECTION", JudgeParams),
    "fuzzing": ("harness.scoring:FUZZING", JudgeParams),
})
# An explainer's `explain(neuron)` describes a neuron from its explain split. The `llm` explainer runs
# a prompt variant (`messages`, `parse`); hypothesis_loop holds its own conversation with its LLM.
# Both take the cell's `judge` (calibration only) to choose among candidates.
EXPLAINERS = _group("explainer", "explainer kind", {
    "llm": ("harness.explain:LLMExplainer", LLMExplainerParams, ("judge",)),
    "hypothesis_loop": ("harness.explain:HypothesisLoop", HypothesisLoopParams, ("judge",)),
    "baseline_top_tokens": ("baselines.top_tokens:TopTokensExplainer", TopTokensBaselineParams),
    "baseline_weight_in": ("baselines.weight_tokens:WeightInExplainer", WeightTokensParams),
    "baseline_weight_out": ("baselines.weight_tokens:WeightOutExplainer", WeightTokensParams),
    "baseline_empty": ("baselines.empty:EmptyExplainer", EmptyParams),
    "baseline_borrowed": ("baselines.borrowed:BorrowedExplainer", BorrowedParams),
})
PROMPTS = _group("prompt", "prompt variant", {
    "openai_tokens": ("harness.explain:OpenAITokens", OpenAITokensParams),
    "top_tokens": ("harness.explain:TopTokens", TopTokensPromptParams),
    "contrastive": ("harness.explain:Contrastive", ContrastiveParams),
    "cot": ("harness.explain:ChainOfThought", ChainOfThoughtParams),
})
BACKENDS = _group("backend", "LLM backend", {
    "openai": ("harness.llm.openai_backend:OpenAIBackend", OpenAIBlock),
    "openai_compatible": ("harness.llm.openai_backend:OpenAIBackend", OpenAICompatibleBlock),
    "anthropic": ("harness.llm.anthropic_backend:AnthropicBackend", AnthropicBlock),
    "hf_local": ("harness.llm.hf_local:HFLocalBackend", HFLocalBlock),
})
# The kinds outside a cell's config. A subject source's target loads (model, tokenizer) from the
# subject's checked config; a corpus source's reads its documents (its parameters as keywords).
SUBJECT_SOURCES = _group("subject_source", "subject source", {
    "gguf_wheel": ("harness.subject:load_gguf", GGUFWheelParams),
    "gguf_parts": ("harness.subject:load_gguf", GGUFPartsParams),
    "hub": ("harness.subject:load_hub", HubParams),
    "random_init": ("harness.subject:load_random_init", RandomInitParams),
})
CORPORA = _group("corpus", "corpus source", {
    "brown": ("harness.corpus:load_brown", BrownParams),
    "text_dir": ("harness.corpus:load_text_dir", TextDirParams),
    "hf": ("harness.corpus:load_hf", HFDatasetParams),
})
# A corruption's target gives its order of decoder layers for a subject of `n_layers` layers
# (harness.corrupt.corruption_spec), checking what needs that count.
CORRUPTIONS = _group("corruption", "corruption kind", {
    "none": ("harness.corrupt:none_order", NoParams),
    "skip_last": ("harness.corrupt:skip_last_order", SkipCountParams),
    "skip_first": ("harness.corrupt:skip_first_order", SkipCountParams),
    "skip": ("harness.corrupt:skip_order", SkipParams),
    "repeat": ("harness.corrupt:repeat_order", RepeatParams),
    "permute": ("harness.corrupt:permute_order", PermuteParams),
})
# The activations the GELU check swaps in (harness/gelu/variants.py), by transformers' names.
GELU_VARIANTS = _group("gelu_variant", "GELU variant", {
    name: (f"harness.gelu.variants:{name.upper()}", NoParams)
    for name in ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu")
})
# How a completions endpoint gives a prompt's own logprobs: `llm.form` of a served model's block;
# the form's parameters are further keys of that block.
COMPLETION_FORMS = _group("completion_form", "prompt-logprobs form", {
    "echo": ("harness.llm.completions:CompletionsBackend", EchoFormParams),
    "prompt_logprobs": ("harness.llm.completions:CompletionsBackend", NoParams),
})
GROUPS = {g.name: g for g in (SIMULATORS, SCORERS, EXPLAINERS, PROMPTS, BACKENDS, SUBJECT_SOURCES, CORPORA,
                              CORRUPTIONS, GELU_VARIANTS, COMPLETION_FORMS)}


def component(group: str, name: Any) -> Component:
    if group not in GROUPS:
        raise ConfigError(f"unknown component group {group!r}; known: {sorted(GROUPS)}")
    return GROUPS[group].component(name)


def build(group: str, name: Any, params: dict[str, Any] | None = None, context: "RunContext | None" = None,
          **given: Any) -> Any:
    """The one factory: the component `name` of `group`, its parameters checked and defaulted,
    built with the run's resources (and what the caller built for it, `given`)."""
    return component(group, name).build(params, context, **given)


def named(tree: dict[str, Any]) -> list[tuple[Group, Any, str, Any]]:
    """Each component a config tree names, as (its group, its name, where its block is, its parameters):
    the simulator, the explainer (and a baseline_borrowed explainer's source), the prompt variant and
    each scorer. A name may be unknown to its group."""
    blocks = [(SIMULATORS, "simulator", tree.get("simulator")), (PROMPTS, "prompt", tree.get("prompt"))]
    explainer, where = tree.get("explainer"), "explainer"
    while isinstance(explainer, dict):  # baseline_borrowed names the explainer it is built on as its `source`
        blocks.append((EXPLAINERS, where, explainer))
        explainer, where = explainer.get("source"), f"{where}.source"
    out = [(group, block.get("kind"), where, {k: v for k, v in block.items() if k != "kind"})
           for group, where, block in blocks if isinstance(block, dict)]
    return out + [(SCORERS, name, f"scorer.{name}", params) for name, params in (tree.get("scorer") or {}).items()]


def component_rules(tree: dict[str, Any]) -> dict[str, Rule]:
    """The rules of the parameters of every component a config tree names: `simulator.*` for its
    simulator kind, `explainer.*` and `prompt.*` likewise, `scorer.<name>.*` for each scorer."""
    rules: dict[str, Rule] = {}
    for group, name, where, _ in named(tree):
        if name in group:
            rules.update(group.component(name).rules(where))
    return rules


def unknown_options(tree: dict[str, Any]) -> list[str]:
    """Each key of a named component's block that is not one of its parameters."""
    return [problem for group, name, where, params in named(tree) if name in group and isinstance(params, dict)
            for problem in group.component(name).unknown(params, where)]


# --- What a run shares among its components ----------------------------------------------------

@dataclass
class RunContext:
    """The resources a run's components share: the `ledger` every paid call is counted in, the
    `cache` of model calls, the `judge` that scores a candidate explanation on a neuron's
    calibration split (a cell's simulator and first scorer; never test), the set's `manifest`
    (which names its subject) and the subject model, loaded once per process with its weight digest
    checked (`harness.subject.set_subject`), or given (a modified model in tests). LLMs built
    through `llm()` share the ledger and cache."""

    manifest: dict[str, Any] | None = None
    ledger: Any = None
    cache: Any = None
    device: str = "cpu"
    given_subject: Any = None
    judge: Any = None  # (neuron, explanation text) → its score on the neuron's calibration split
    _llms: dict[str, Any] = field(default_factory=dict, repr=False)
    _embedders: dict[tuple, Any] = field(default_factory=dict, repr=False)

    def subject(self, device: str | None = None) -> Any:
        if self.given_subject is not None:
            return self.given_subject
        if not self.manifest:
            raise ConfigError("no subject: this component runs the set's subject model, so it needs the set's "
                              "manifest; run it through a cell (harness.cell) or give RunContext(manifest=...)")
        from harness.subject import set_subject

        return set_subject(self.manifest, device or self.device)

    @property
    def set_hash(self) -> str:
        """The set's content hash: what cached per-set data (window embeddings) is keyed by."""
        if not self.manifest or not self.manifest.get("hash"):
            raise ConfigError("this component caches data per neuron set, so it needs the set's manifest; run it "
                              "through a cell (harness.cell) or give RunContext(manifest=...)")
        return self.manifest["hash"]

    def embedder(self, path: str | None, device: str, batch_size: int) -> Any:
        """A sentence-embedding model (harness/embedding.py), loaded once per run."""
        from harness.embedding import Embedder

        key = (path, device, batch_size)
        if key not in self._embedders:
            self._embedders[key] = Embedder(path, device=device, batch_size=batch_size)
        return self._embedders[key]

    def llm(self, block: dict[str, Any]) -> Any:
        """An LLM for a model block (conf's `llm:`), behind this run's ledger and call cache; one per block."""
        from harness.llm import LLM, make_backend

        key = json.dumps(block, sort_keys=True)
        if key not in self._llms:
            self._llms[key] = LLM(make_backend(block), ledger=self.ledger, cache=self.cache)
        return self._llms[key]
