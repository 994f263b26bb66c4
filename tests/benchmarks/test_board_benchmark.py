"""A board of 200 entries on the real frozen set v1: render time and the page's first-load size.

The 200 entries are generated from the committed baseline_top_tokens entry (each with its own
name, explanations and scores, so none is a duplicate) and written to a temporary entries
directory. Verifying one costs seconds (token_match re-scores 300 neurons) and happens once per
entry file on a verifier's machine (`VerdictCache`); the benchmark seeds that cache as a first
render would, then times what every later render does: read and hash 200 entry files, take their
verdicts from the cache, and write README.md, index.html and data/. Reports (printed, and in the
benchmark's extra_info) the seconds of each step and the first-load bytes (index.html: what a
reader's browser loads before opening an entry or a neuron), which must stay under 1 MB.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time

import numpy as np

from harness import leaderboard as lb
from harness.leaderboard.assess import VerdictCache
from harness.leaderboard.entry import dumps_entry
from harness.leaderboard.views import SetViews

N_ENTRIES = 200
FIRST_LOAD_LIMIT = 1 << 20


def _variant(entry: dict, i: int, rng: np.random.Generator) -> dict:
    """Entry i: its own name and explanations, scores shifted by a seeded amount."""
    out = copy.deepcopy(entry)
    out["name"] = f"generated-{i:03d}"
    shift = float(rng.normal(0, 0.05))
    for n in out["neurons"]:
        n["explanation"] = (n["explanation"] or "") + f" (variant {i})"
        n["scores"] = {k: (v + shift if v is not None else None) for k, v in n["scores"].items()}
    for block in out["summary"]["scores"].values():
        block["mean"] = block["mean"] + shift if block["mean"] is not None else None
    return out


def test_render_200_entries(benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path / "cache"))
    source = lb.load_config()
    cfg = lb.load_config(entries_dir=tmp_path / "board" / "entries")
    cfg["entries_dir"].mkdir(parents=True)
    full = lb.read_entry(source["entries_dir"] / "baseline_top_tokens.json", source)
    slim = SetViews(cfg).slim(full)
    cache, rng = VerdictCache(cfg), np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(N_ENTRIES):
        seed = int(rng.integers(1 << 31))
        path = cfg["entries_dir"] / f"generated-{i:03d}.json"
        path.write_text(dumps_entry(_variant(full, i, np.random.default_rng(seed))))
        cache.put(hashlib.sha256(path.read_bytes()).hexdigest(), _variant(slim, i, np.random.default_rng(seed)),
                  {"status": "verified", "reason": ""})
    generate = time.perf_counter() - t0

    def render():
        t = time.perf_counter()
        assessed = lb.assess(cfg)
        t_assess = time.perf_counter() - t
        md, page = lb.render(cfg, tmp_path / "out", assessed)
        return assessed, page, t_assess, time.perf_counter() - t - t_assess

    assessed, page, t_assess, t_render = benchmark.pedantic(render, rounds=1, iterations=1)
    assert [a.status for a in assessed] == ["verified"] * N_ENTRIES
    first_load = page.stat().st_size
    data = sorted((tmp_path / "out" / "data").rglob("*.js"))
    index = json.loads(page.read_text().split('<script type="application/json" id="data">')[1].split("</script>")[0])
    assert len(index["entries"]) == N_ENTRIES and len(data) == N_ENTRIES + len(full["neurons"])
    assert first_load < FIRST_LOAD_LIMIT, f"index.html is {first_load} bytes with {N_ENTRIES} entries"
    largest = max(p.stat().st_size for p in data)
    benchmark.extra_info.update({"entries": N_ENTRIES, "seconds_assess_cached": round(t_assess, 2),
                                 "seconds_render": round(t_render, 2), "first_load_bytes": first_load,
                                 "largest_payload_bytes": largest, "seconds_generate": round(generate, 1)})
    print(f"\n{N_ENTRIES} entries of {len(full['neurons'])} neurons: assess (verdicts cached) {t_assess:.1f} s, "
          f"render {t_render:.1f} s; first load (index.html) {first_load / 1024:.0f} KiB, largest payload file "
          f"{largest / 1024:.0f} KiB, {len(data)} payload files")
