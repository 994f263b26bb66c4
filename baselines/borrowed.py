"""`baseline_borrowed`: each neuron gets the explanation another neuron of the same run gets from
a source explainer (a seeded derangement): the random-explanation floor as a leaderboard row.
Every cell also reports this floor for its own explainer (`summary.json` → `floor`).

The source is an explainer already built (`make_explainer` builds it from the config's `source`,
a no-LLM explainer config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from baselines.top_tokens import TopTokensExplainer
from harness.errors import ConfigError
from harness.records import NeuronRecord
from harness.scoring.stats import derangement
from harness.types import Explainer, Explanation


@dataclass
class BorrowedExplainer:
    source: Explainer = field(default_factory=TopTokensExplainer)
    seed: int = 0
    _borrowed: dict[tuple[int, int], Explanation] = field(default_factory=dict, init=False, repr=False)

    def prepare(self, neurons: list[NeuronRecord]) -> None:
        """Explain every neuron of the run with the source explainer, then hand them round."""
        texts = [self.source.explain(n).text for n in neurons]
        for neuron, j in zip(neurons, derangement(len(neurons), self.seed)):
            donor = neurons[j]
            self._borrowed[(neuron.layer, neuron.neuron)] = Explanation(
                text=texts[j], details={"borrowed_from": donor.neuron_id})

    def explain(self, neuron: NeuronRecord) -> Explanation:
        if (neuron.layer, neuron.neuron) not in self._borrowed:
            raise ConfigError("baseline_borrowed needs prepare(neurons) first (the cell calls it)")
        return self._borrowed[(neuron.layer, neuron.neuron)]
