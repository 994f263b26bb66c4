"""Every plug-in a config under conf/ names resolves through its registry, and an unknown name is
one ConfigError that lists the known ones."""

from pathlib import Path

import pytest
import yaml

from harness.errors import ConfigError
from harness.explain import EXPLAINERS, PROMPTS
from harness.llm import BACKENDS
from harness.registry import Registry
from harness.scoring import SCORERS, Scorer
from harness.simulate import SIMULATORS

CONF = Path(__file__).resolve().parents[1] / "conf"


def _configs(group: str) -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted((CONF / group).glob("*.yaml"))}


@pytest.mark.parametrize("group, registry", [("explainer", EXPLAINERS), ("simulator", SIMULATORS),
                                             ("prompt", PROMPTS)])
def test_every_kind_in_conf_resolves(group, registry):
    configs = _configs(group)
    assert configs
    for name, cfg in configs.items():
        assert callable(registry[cfg["kind"]]), f"conf/{group}/{name}.yaml"


def test_every_scorer_and_backend_in_conf_resolves():
    for name, cfg in _configs("scorer").items():
        for scorer in cfg:
            assert isinstance(SCORERS[scorer], Scorer) and SCORERS[scorer].name == scorer, f"conf/scorer/{name}.yaml"
    for group in ("explainer", "simulator"):
        for name, cfg in _configs(group).items():
            if "llm" in cfg:
                assert callable(BACKENDS[cfg["llm"]["backend"]]), f"conf/{group}/{name}.yaml"
    source = _configs("explainer")["baseline_borrowed"]["source"]
    assert callable(EXPLAINERS[source["kind"]])


@pytest.mark.parametrize("registry", [EXPLAINERS, PROMPTS, SIMULATORS, SCORERS, BACKENDS])
def test_every_registered_name_resolves(registry):
    for name in registry:
        assert registry[name] is not None


def test_unknown_name_lists_the_known_ones_and_imports_lazily():
    registry = Registry("widget", {"b": "json:loads", "a": "json:dumps"})
    with pytest.raises(ConfigError, match=r"unknown widget 'c'; known: \['a', 'b'\]"):
        registry["c"]
    assert "a" in registry and "c" not in registry and sorted(registry) == ["a", "b"] and len(registry) == 2
    import json

    assert registry["b"] is json.loads
    with pytest.raises(ConfigError, match="unknown simulator kind 'nope'"):
        SIMULATORS["nope"]
    with pytest.raises(ConfigError, match="unknown prompt variant None"):
        PROMPTS[None]
