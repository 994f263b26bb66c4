"""Components: every plug-in is named, configured and built one way (harness/components.py).
The params class of a component is the one place its parameters are declared: the cell's checks,
the leaderboard's allow-list and verification's rebuild all read it."""

from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import yaml

from harness import leaderboard as lb
from harness.components import (BACKENDS, COMPLETION_FORMS, CORPORA, CORRUPTIONS, EXPLAINERS, GELU_VARIANTS, GROUPS,
                                PROMPTS, SCORERS, SIMULATORS, SUBJECT_SOURCES, Component, RunContext, build, component)
from harness.corpus import load_corpus
from harness.corrupt import corruption_spec, schema_text
from harness.explain import HypothesisLoop, make_explainer
from harness.gelu.variants import Variant, get_variant
from harness.llm.completions import CompletionsBackend
from harness.params import TokenMatchParams, option
from harness.errors import ConfigError
from harness.leaderboard.entry import cell_entry_name, components
from harness.llm.cache import Ledger
from harness.rules import BOOL
from harness.scoring import Scorer, scorers_from
from harness.simulate import TokenMatchSimulator, make_simulator
from harness.subject import checked_config, load_subject, subject_config
from harness.validation import validate_cell_config
from tests.cells import cell_cfg

CONF = Path(__file__).resolve().parents[1] / "conf"


def _configs(group: str) -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted((CONF / group).glob("*.yaml"))}


# --- every name in conf/ resolves, and every preset is a valid parameter set ---------------------

@pytest.mark.parametrize("group", ["explainer", "simulator", "prompt"])
def test_every_kind_in_conf_resolves(group):
    configs = _configs(group)
    assert configs
    for name, cfg in configs.items():
        assert callable(GROUPS[group][cfg["kind"]]), f"conf/{group}/{name}.yaml"


def test_every_simulator_and_scorer_preset_parses_and_a_preset_named_after_its_component_is_its_defaults():
    for name, cfg in _configs("simulator").items():
        kind = cfg.pop("kind")
        params = SIMULATORS.component(kind).parse(cfg, "simulator")  # unknown keys and bad values raise
        if name == kind:
            assert {k: params[k] for k in cfg} == {k: SIMULATORS.component(kind).defaults()[k] for k in cfg}, name
    for name, cfg in _configs("scorer").items():
        for scorer, params in cfg.items():
            assert isinstance(SCORERS[scorer], Scorer) and SCORERS[scorer].name == scorer
            assert SCORERS.component(scorer).parse(params, f"scorer.{scorer}") == SCORERS.component(scorer).defaults()


def test_every_explainer_and_prompt_preset_parses_and_one_named_after_its_component_is_its_defaults():
    for group in (EXPLAINERS, PROMPTS):
        for name, cfg in _configs(group.name).items():
            spec = group.component(cfg.pop("kind"))
            assert spec.parse(cfg, group.name) == {**spec.defaults(), **cfg}, name  # unknown keys and bad values raise
            if name == spec.name:
                assert cfg == spec.defaults(), name
            validate_cell_config(cell_cfg(f"{group.name}={name}"))
    assert "hypothesis_loop" in EXPLAINERS and "hypothesis_loop" not in PROMPTS  # an explainer, not a prompt


def test_each_backends_model_block_is_its_explainer_presets():
    """Verification puts an entry's model under these blocks: they must be what conf/ documents."""
    for backend in BACKENDS:
        llm = _configs("explainer")[backend]["llm"]
        assert llm == {"backend": backend, **BACKENDS.component(backend).defaults()}, backend


@pytest.mark.parametrize("group", GROUPS.values(), ids=list(GROUPS))
def test_every_registered_name_resolves(group):
    for name in group:
        assert group[name] is not None
        assert component(group.name, name).name == name


def test_an_unknown_name_or_key_is_one_error_listing_what_is_known():
    with pytest.raises(ConfigError, match=r"unknown simulator kind 'nope'; known: \['all_at_once'"):
        SIMULATORS["nope"]
    with pytest.raises(ConfigError, match="unknown prompt variant None"):
        PROMPTS[None]
    with pytest.raises(ConfigError, match=r"unknown option simulator.hgh of simulator token_match; known: \['high'\]"):
        build("simulator", "token_match", {"hgh": 3})
    with pytest.raises(ConfigError, match="simulator.batch_size=0 must be a positive integer"):
        build("simulator", "all_at_once", {"batch_size": 0})
    with pytest.raises(ConfigError, match=r"scorer.threshold.max_fractions.1=2 must be a number in \(0, 1\]"):
        scorers_from({"threshold": {"max_fractions": [0.5, 2]}})
    with pytest.raises(ConfigError, match="unknown option scorer.threshold.cut"):
        validate_cell_config(cell_cfg("scorer=[threshold]", "+scorer.threshold.cut=3"))


def test_the_entry_options_are_read_off_the_fields():
    assert SIMULATORS.component("token_match").entry_options() == ["high"]
    assert SIMULATORS.component("all_at_once").entry_options() == ["literal"]
    assert SIMULATORS.component("json").entry_options() == []
    assert SCORERS.component("threshold").entry_options() == ["max_fractions", "quantiles"]
    assert SCORERS.component("ablation").entry_options() == ["windows_per_kind"]
    assert not SIMULATORS.component("oracle_quantized").on_board
    # an entry describes its explainer and prompt by every parameter they ran with
    assert EXPLAINERS.component("hypothesis_loop").entry_options() == ["llm", "sampling", "k", "rounds", "max_records"]
    assert EXPLAINERS.component("baseline_borrowed").entry_options() == ["source", "seed"]
    assert PROMPTS.component("top_tokens").entry_options() == ["n_tokens", "context"]


def test_the_factory_hands_the_run_its_resources():
    ledger = Ledger()
    sim = make_simulator({"kind": "json", "llm": {"backend": "openai_compatible", "model": "m",
                                                  "base_url": "http://localhost:9/v1", "api_key_required": False}},
                         ledger=ledger)
    assert sim.llm.ledger is ledger
    context = RunContext(ledger=ledger)
    block = {"backend": "openai_compatible", "model": "m", "base_url": "http://localhost:9/v1", "api_key_required": False}
    assert context.llm(block) is context.llm(dict(block)) and context.llm(block).ledger is ledger
    with pytest.raises(ConfigError, match="manifest"):
        RunContext().subject()
    marker = object()
    assert RunContext(given_subject=marker).subject() is marker


# --- explainers and prompt variants ---------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["+explainer.n_tokns=3"], r"unknown option explainer.n_tokns of explainer baseline_top_tokens; known: \['n_tokens'\]"),
    (["+prompt.max_recs=3"], r"unknown option prompt.max_recs of prompt openai_tokens; known: \['max_records'\]"),
    (["explainer=hypothesis_loop", "+explainer.kk=3"], "unknown option explainer.kk of explainer hypothesis_loop"),
    (["explainer=baseline_borrowed", "+explainer.source.n=3"], "unknown option explainer.source.n of explainer "
                                                                "baseline_top_tokens"),
    (["explainer.kind=nope"], r"explainer.kind: unknown explainer kind 'nope'; known: \['baseline_borrowed'"),
    (["explainer.n_tokens=0"], "explainer.n_tokens=0 must be a positive integer"),
    (["explainer=baseline_borrowed", "explainer.source.n_tokens=0"], "explainer.source.n_tokens=0 must be a positive"),
    (["explainer=baseline_empty", "explainer.text=''"], "explainer.text='' must be a non-empty string"),
    (["explainer=hypothesis_loop", "explainer.k=two"], "explainer.k='two' must be a positive integer"),
    (["explainer=hypothesis_loop", "explainer.rounds=-1"], "explainer.rounds=-1 must be an integer >= 0"),
    (["explainer=hypothesis_loop", "explainer.sampling.max_tokens=0"], "explainer.sampling.max_tokens=0 must be"),
    (["prompt=contrastive", "prompt.n_low=-1"], "prompt.n_low=-1 must be an integer >= 0"),
    (["prompt=cot", "prompt.max_records=1.5"], "prompt.max_records=1.5 must be a positive integer"),
])
def test_explainer_and_prompt_options_are_checked_from_their_fields(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate_cell_config(cell_cfg(*overrides))
    assert str(err.value).count("must be") + str(err.value).count("unknown") == 1  # that one problem, named


def test_hypothesis_loop_is_an_explainer_built_with_the_runs_judge_and_llm():
    block = {"backend": "openai_compatible", "model": "m", "base_url": "http://localhost:9/v1", "api_key_required": False}
    judge = lambda neuron, text: 0.0  # noqa: E731
    context = RunContext(ledger=Ledger(), judge=judge)
    explainer = make_explainer({"kind": "hypothesis_loop", "llm": block, "k": 3}, context=context)
    assert isinstance(explainer, HypothesisLoop) and explainer.judge is judge
    assert explainer.llm is context.llm(block) and explainer.llm.ledger is context.ledger  # its calls are counted
    assert (explainer.k, explainer.rounds, explainer.max_records) == (3, 2, 8)  # the given k over the defaults
    with pytest.raises(ConfigError, match="explainer=hypothesis_loop needs a judge"):
        make_explainer({"kind": "hypothesis_loop", "llm": block})
    # the llm explainer takes the same judge and LLM, and the prompt variant conf/prompt/ names
    llm = make_explainer({"kind": "llm", "llm": block}, {"kind": "cot", "max_records": 3}, context)
    assert llm.judge is judge and llm.llm is context.llm(block) and llm.prompt == PROMPTS["cot"](max_records=3)
    with pytest.raises(ConfigError, match="unknown option prompt.k of prompt cot"):
        make_explainer({"kind": "llm", "llm": block}, {"kind": "cot", "k": 3}, context)


def test_an_entry_records_hypothesis_loop_as_its_explainer():
    explainer = {"kind": "hypothesis_loop", **EXPLAINERS.component("hypothesis_loop").defaults()}
    config = {"explainer": explainer, "prompt": {"kind": "openai_tokens", "max_records": 10},
              "simulator": {"kind": "token_match", "high": 10.0}, "scorer": {"correlation": {}}}
    recorded = components(config)
    assert recorded["explainer"]["kind"] == "hypothesis_loop" and recorded["prompt"] is None  # it runs no prompt variant
    assert (recorded["explainer"]["backend"], recorded["explainer"]["model"]) == ("hf_local", "smollm2_135m_instruct")
    assert {k: recorded["explainer"]["parameters"][k] for k in ("k", "rounds", "max_records")} == {
        "k": 4, "rounds": 2, "max_records": 8}
    assert cell_entry_name(config) == "hf_local-smollm2_135m_instruct-hypothesis_loop"


# --- the worked example of docs/components.md ---------------------------------------------------

@dataclass(frozen=True)
class CaseSensitiveParams(TokenMatchParams):  # step 1: the new field, with its rule and entry flag
    case_sensitive: bool = option(False, BOOL, entry=True)


class CaseSensitiveTokenMatch(TokenMatchSimulator):  # step 2: the simulator reads it
    def __init__(self, high: float = 10.0, case_sensitive: bool = False):
        super().__init__(high=high)
        self.case_sensitive = case_sensitive

    def simulate(self, explanation, records):
        if not self.case_sensitive:
            return super().simulate(explanation, records)
        named = {w for w in explanation.split() if w.lower() not in self.stopwords}
        return [[self.high if t.strip() in named else 0.0 for t in r.tokens] for r in records]


def test_adding_a_simulator_option_touches_one_class_and_one_yaml(monkeypatch, tmp_path):
    spec = Component("simulator", "token_match", CaseSensitiveTokenMatch, CaseSensitiveParams)
    monkeypatch.setitem(SIMULATORS._components, "token_match", spec)
    # the cell's checks follow the field's rule ...
    with pytest.raises(ConfigError, match="simulator.case_sensitive='yes' must be true or false"):
        validate_cell_config(cell_cfg("simulator=token_match", "+simulator.case_sensitive=yes"))
    validate_cell_config(cell_cfg("simulator=token_match", "+simulator.case_sensitive=true"))
    # ... the factory passes it ...
    from harness.records import ActivationRecord

    record = ActivationRecord(tokens=["Monday", " monday"], activations=[1.0, 0.0])
    sim = make_simulator({"kind": "token_match", "case_sensitive": True})
    assert sim.simulate("Monday", [record]) == [[10.0, 0.0]]
    assert make_simulator({"kind": "token_match"}).simulate("Monday", [record]) == [[10.0, 10.0]]
    # ... an entry records it, and verification rebuilds the same simulator from it
    config = {"explainer": {"kind": "baseline_top_tokens"}, "scorer": {"correlation": {}},
              "simulator": {"kind": "token_match", "high": 10.0, "case_sensitive": True}}
    recorded = components(config)["simulator"]
    assert recorded["parameters"] == {"high": 10.0, "case_sensitive": True}
    entry = {"simulator": recorded, "scorers": {"correlation": {}}, "stats": {"seed": 0, "bootstrap_resamples": 10}}
    simulator, _ = lb.resolve_components(entry)
    assert simulator == {"kind": "token_match", "high": 10.0, "case_sensitive": True}


# --- the kinds outside a cell: subject sources, corpora, corruptions, GELU variants, completions forms

def test_every_subject_config_parses_through_its_source():
    sources = set()
    for name, cfg in _configs("subject").items():
        checked = checked_config(subject_config(name))  # unknown keys, missing ones and bad values raise
        spec = SUBJECT_SOURCES.component(cfg["source"])
        assert checked == {**cfg, **{k: v for k, v in spec.defaults().items() if k not in cfg}}, name
        sources.add(cfg["source"])
    assert sources == set(SUBJECT_SOURCES)  # each source has a config that exercises it


def test_every_corpus_config_parses_through_its_source():
    for name, cfg in _configs("corpus").items():
        cfg.pop("name")
        spec = CORPORA.component(cfg.pop("source"))
        assert spec.parse(cfg, "corpus") == {**spec.defaults(), **cfg}, name  # `???` is a string here
    assert set(_configs("corpus")) == set(CORPORA)


def test_an_unknown_source_kind_or_key_outside_a_cell_is_one_error_naming_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown subject source 'ftp'; known: \['gguf_parts', 'gguf_wheel', 'hub', "
                                          r"'random_init'\]"):
        load_subject({"name": "x", "source": "ftp"})
    with pytest.raises(ConfigError, match=r"unknown option subject.hubid of subject_source hub; known: \['name', "
                                          r"'hub_id', 'tokenizer_id'\]"):
        load_subject({**subject_config("gpt2"), "hubid": "gpt2"})  # refused before any download
    with pytest.raises(ConfigError, match="subject.hub_id is required"):
        checked_config({"name": "x", "source": "hub"})
    with pytest.raises(ConfigError, match="subject.gguf_sha256='abc' must be a sha256 digest"):
        checked_config({**subject_config("smollm2_135m"), "gguf_sha256": "abc"})
    with pytest.raises(ConfigError, match=r"subject.parts.1='data/p1' must be a mapping"):
        checked_config({**subject_config("gemma3_270m"), "parts": [{"package": "p", "file": "f"}, "data/p1"]})

    with pytest.raises(ConfigError, match=r"unknown corpus source 'gutenberg'; known: \['brown', 'hf', 'text_dir'\]"):
        load_corpus({"source": "gutenberg"})
    with pytest.raises(ConfigError, match=r"unknown option corpus.max_docs of corpus brown; known: "
                                          r"\['max_documents'\]"):
        load_corpus({"source": "brown", "max_docs": 3})  # refused before the corpus is fetched
    with pytest.raises(ConfigError, match="corpus.path is required"):
        load_corpus({"source": "text_dir"})
    with pytest.raises(ConfigError, match="corpus.max_documents=0 must be a positive integer or null"):
        load_corpus({"source": "text_dir", "path": ".", "max_documents": 0})

    with pytest.raises(ConfigError, match=r"unknown corruption kind 'drop'; known: \['none', 'permute', 'repeat'"):
        corruption_spec({"kind": "drop"}, 6)
    with pytest.raises(ConfigError, match=r"unknown option corruption.seed of corruption skip; known: \['layers', "
                                          r"'start', 'stop'\]"):
        corruption_spec({"kind": "skip", "layers": [1], "seed": 3}, 6)
    with pytest.raises(ConfigError, match=r"corruption.layers=\[1, '2'\] must be a list of integers or null"):
        corruption_spec({"kind": "skip", "layers": [1, "2"]}, 6)

    with pytest.raises(ConfigError, match=r"unknown GELU variant 'erf'; known: \['gelu', 'gelu_fast', 'gelu_new', "
                                          r"'gelu_pytorch_tanh', 'quick_gelu'\]"):
        get_variant("erf")
    with pytest.raises(ConfigError, match=r"unknown prompt-logprobs form 'logits'; known: "
                                          r"\['echo', 'prompt_logprobs'\]"):
        COMPLETION_FORMS.component("logits")


def test_the_variants_are_their_components_targets():
    for name in GELU_VARIANTS:
        variant = get_variant(name)
        assert isinstance(variant, Variant) and variant.name == name
        assert component("gelu_variant", name).defaults() == {}


def test_echo_shift_belongs_to_the_echo_form():
    served = {"name": "openai_compatible", "model": "m", "base_url": "http://localhost:9/v1", "api_key_required": False}
    assert CompletionsBackend(**served).identity()["echo_shift"] == 0  # the echo form's default
    assert CompletionsBackend(**served, echo_shift=1).identity()["echo_shift"] == 1
    assert CompletionsBackend(**served, form="prompt_logprobs").identity()["echo_shift"] == 0
    with pytest.raises(ConfigError, match="llm.echo_shift=2 must be 0 or 1"):
        CompletionsBackend(**served, echo_shift=2)
    with pytest.raises(ConfigError, match=r"unknown option llm.echo_shift of completion_form prompt_logprobs; "
                                          r"known: \[\]"):
        CompletionsBackend(**served, form="prompt_logprobs", echo_shift=1)


def test_the_corruption_schema_lists_every_kinds_fields():
    lines = {line.split(":")[0].removeprefix("- "): line for line in schema_text().splitlines()}
    assert list(lines) == list(CORRUPTIONS)
    for kind in CORRUPTIONS:
        spec = CORRUPTIONS.component(kind)
        for f in fields(spec.params):
            assert f"{f.name}: {f.metadata['rule'][1]}" in lines[kind], (kind, f.name)
    assert lines["none"] == "- none"
    assert "n: an integer (required)" in lines["skip_last"]
    assert "times: an integer (default 2)" in lines["repeat"] and "seed: an integer (default 0)" in lines["permute"]
