"""`baseline_borrowed`: each neuron gets the explanation another neuron of the same run gets from
a source explainer (a seeded derangement): the random-explanation floor as a leaderboard row.
Every cell also reports this floor for its own explainer (`summary.json` → `floor`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.errors import ConfigError
from harness.explain import Explanation
from harness.records import NeuronRecord


@dataclass
class BorrowedExplainer:
    source: dict[str, Any] = field(default_factory=lambda: {"kind": "baseline_top_tokens"})
    seed: int = 0
    _borrowed: dict[tuple[int, int], Explanation] = field(default_factory=dict, init=False, repr=False)

    def prepare(self, neurons: list[NeuronRecord]) -> None:
        """Explain every neuron of the run with the source explainer, then hand them round."""
        from harness.cell import derangement
        from harness.explain import make_explainer

        if dict(self.source).get("kind") == "llm":
            raise ConfigError("baseline_borrowed borrows from a no-LLM explainer; for LLM explainers "
                              "use the cell's own floor control (summary.json → floor)")
        source = make_explainer(self.source)
        texts = [source.explain(n).text for n in neurons]
        for neuron, j in zip(neurons, derangement(len(neurons), self.seed)):
            donor = neurons[j]
            self._borrowed[(neuron.layer, neuron.neuron)] = Explanation(
                text=texts[j], details={"borrowed_from": donor.neuron_id})

    def explain(self, neuron: NeuronRecord) -> Explanation:
        if (neuron.layer, neuron.neuron) not in self._borrowed:
            raise ConfigError("baseline_borrowed needs prepare(neurons) first (the cell calls it)")
        return self._borrowed[(neuron.layer, neuron.neuron)]
