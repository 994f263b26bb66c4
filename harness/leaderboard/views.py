"""What the board shows of a frozen set and of an entry: each set's neurons with a few windows
(`SetViews`), and an entry slimmed to those windows with its summary recomputed (`SetViews.slim`)."""

from __future__ import annotations

import math
from typing import Any

from harness.errors import HarnessError
from harness.leaderboard.schema import known_set
from harness.leaderboard.verify import recomputed_summary


def rounded(x, d=3):
    """`x` to `d` decimals for the page (an int when whole), or None when missing or not finite."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    v = round(float(x), d)
    return int(v) if v == int(v) else v


class SetViews:
    """Each frozen set's neurons as the viewer shows them (a few windows each), loaded once."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg, self.views = cfg, {}

    def get(self, set_hash: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        if set_hash not in self.views:
            try:
                self.views[set_hash] = self._build(known_set(entry, self.cfg["sets_dir"]))
            except HarnessError:
                self.views[set_hash] = None
        return self.views[set_hash]

    def _build(self, neuron_set) -> dict[str, Any]:
        dd = self.cfg["drilldown"]
        neurons = []
        for n in neuron_set.neurons:
            tops = sorted([r for r in n.explain if r.kind == "top"], key=lambda r: -r.max_activation)
            test_idx = sorted([i for i, r in enumerate(n.test) if r.kind == "top"],
                              key=lambda i: -n.test[i].max_activation)[:dd["test_top"]]
            test_idx += [i for i, r in enumerate(n.test) if r.kind == "random"][:dd["test_random"]]
            neurons.append({"layer": n.layer, "neuron": n.neuron, "max": rounded(n.max_activation), "shown": test_idx,
                            "explain": [{"t": r.tokens, "a": [rounded(a, 2) for a in r.activations]}
                                        for r in tops[:dd["explain_windows"]]],
                            "test": [{"k": n.test[i].kind, "t": n.test[i].tokens,
                                      "a": [rounded(a, 2) for a in n.test[i].activations]} for i in test_idx]})
        return {"name": neuron_set.name, "neurons": neurons}

    def slim(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The entry as the board uses it: each neuron's test simulation kept only on the windows the
        page shows (`shown_simulation`), and the summary recomputed from its per-neuron values (the
        submitter's own summary is compared by verification, never shown)."""
        view = self.get(entry["neuron_set"]["hash"], entry)
        shown = {(n["layer"], n["neuron"]): n["shown"] for n in view["neurons"]} if view else {}
        listed = [(n["layer"], n["neuron"]) for n in entry["neurons"]]
        order = list(shown) if set(shown) == set(listed) else listed
        neurons = []
        for n in entry["neurons"]:
            sims = n.get("test_simulation") or []
            picks = shown.get((n["layer"], n["neuron"]), [])
            neurons.append({**{k: v for k, v in n.items() if k != "test_simulation"},
                            "shown_simulation": [[rounded(v, 1) for v in sims[i]] if i < len(sims) and sims[i] is not None
                                                 else None for i in picks]})
        return {**entry, "neurons": neurons, "summary": recomputed_summary(entry, order)}
