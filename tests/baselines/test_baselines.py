"""No-LLM explainers and controls: top tokens, borrowed (the floor) and the oracle ceiling."""

import pytest

from baselines.borrowed import BorrowedExplainer
from baselines.top_tokens import TopTokensExplainer
from harness.cell import derangement
from harness.errors import ConfigError
from harness.explain import make_explainer
from harness.records import ActivationRecord, NeuronRecord
from harness.scoring.correlation import correlation_scores
from harness.simulate import OracleQuantizedSimulator, TokenMatchSimulator


def _neuron(layer, word):
    top = ActivationRecord(tokens=["The", f" {word}", " is", " here"], activations=[0.0, 5.0, 0.5, 0.0], kind="top")
    rand = ActivationRecord(tokens=["A", " cat", f" {word}"], activations=[0.1, 0.0, 4.0], kind="random")
    return NeuronRecord(layer=layer, neuron=0, explain=[top, rand], calibration=[top], test=[top, rand])


def test_top_tokens_names_the_most_activating_tokens_first():
    assert TopTokensExplainer(n_tokens=2).explain(_neuron(0, "river")).text == 'the tokens "river", "is"'


def test_token_match_predicts_on_named_tokens_only():
    sim = TokenMatchSimulator()
    assert sim.simulate('the tokens "river"', [_neuron(0, "river").test[0]]) == [[0.0, 10.0, 0.0, 0.0]]
    assert sim.named_tokens("nothing in particular") == set()  # the empty baseline names nothing


def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in [2, 3, 10, 50]:
        perm = derangement(n, seed=1)
        assert sorted(perm) == list(range(n)) and all(perm[i] != i for i in range(n))
    assert list(derangement(10, 4)) == list(derangement(10, 4))


def test_borrowed_gives_each_neuron_another_neurons_explanation():
    neurons = [_neuron(i, w) for i, w in enumerate(["river", "lake", "sea", "pond"])]
    explainer = BorrowedExplainer(seed=0)
    explainer.prepare(neurons)
    own = {n.layer: TopTokensExplainer().explain(n).text for n in neurons}
    got = {n.layer: explainer.explain(n) for n in neurons}
    for layer, explanation in got.items():
        donor = explanation.details["borrowed_from"]["layer_index"]
        assert donor != layer and explanation.text == own[donor]
    assert sorted(e.details["borrowed_from"]["layer_index"] for e in got.values()) == [0, 1, 2, 3]
    assert BorrowedExplainer(TopTokensExplainer(n_tokens=1), seed=0).source.n_tokens == 1
    with pytest.raises(ConfigError, match="no-LLM explainer"):
        make_explainer({"kind": "baseline_borrowed", "source": {"kind": "llm"}})


def test_borrowed_from_config_gets_its_source_built():
    explainer = make_explainer({"kind": "baseline_borrowed", "source": {"kind": "baseline_top_tokens", "n_tokens": 2},
                                "seed": 3})
    assert isinstance(explainer, BorrowedExplainer) and explainer.seed == 3
    assert isinstance(explainer.source, TopTokensExplainer) and explainer.source.n_tokens == 2


def test_oracle_ceiling_is_the_quantised_truth():
    neuron = _neuron(0, "river")
    sims = OracleQuantizedSimulator().simulate("", neuron.test)
    assert sims == [[0.0, 10.0, 1.0, 0.0], [0.0, 0.0, 8.0]]
    assert correlation_scores(neuron.test, sims)["ev_correlation_score"] > 0.99


@pytest.mark.parametrize("kind", ["baseline_weight_in", "baseline_weight_out"])
def test_a_weight_baseline_without_a_set_or_subject_says_what_it_needs(kind):
    """Its default subject is the set's: built outside a cell, with no set and no subject named, it is
    a ConfigError saying so (not an unknown subject None)."""
    with pytest.raises(ConfigError, match="no subject: this component runs the set's subject model"):
        make_explainer({"kind": kind})
