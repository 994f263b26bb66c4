"""Simulated-activation ablation: does the simulation stand in for the neuron in the subject model?

For each neuron, the subject model (named by the set's manifest) runs on some of its `test`
windows (by their token ids, exactly as recorded: no BOS) four ways:
- clean;
- *simulated*: the neuron's activation at every position replaced by `a·sim + b`, the
  simulation mapped linearly to the real scale by least squares on the **calibration** split
  (calibration simulations against calibration true activations; a constant calibration
  simulation carries no information and gives `a = 0`, `b` = the calibration mean);
- *mean-ablated*: the neuron set to its corpus mean (`neuron.mean`);
- *zero-ablated*: the neuron set to 0.

Per patched run, the divergence from the clean run is KL(clean ‖ patched) of the next-token
distributions, averaged over every position of the chosen windows. Metrics:
- `score` (headline) = 1 − KL(simulated) / KL(mean-ablated): 1 when the simulation restores the
  model's behaviour, 0 when it is no better than the mean, negative when worse;
- `score_vs_zero` = 1 − KL(simulated) / KL(zero-ablated);
- `kl_simulated`, `kl_mean`, `kl_zero` (nats per token).
NaN when the neuron has no usable window or the reference KL is 0.

Cost is bounded by `windows_per_kind` (conf/scorer/ablation.yaml: the first 5 `top` and the first
5 `random` test windows, in the set's order; windows the simulator failed on are skipped). Rows patching
different neurons share forward passes (`harness.subject.patch_rows`), `batch_size` rows each;
a window's clean run is shared by every neuron using it. The mean- and zero-ablation KLs do not
depend on the explanation and are cached per process, so a cell's floor and ceiling controls
cost two runs per window, not four. The subject is loaded once per process (per config) and its
weight digest checked against the manifest's.
"""

from __future__ import annotations


import numpy as np
import torch
from tqdm import tqdm

from harness.components import RunContext
from harness.errors import ConfigError
from harness.records import ActivationRecord
from harness.subject import patch_rows

HEADLINE = "score"
_REFERENCE_KL: dict[tuple, tuple[float, float]] = {}  # (digest, layer, neuron, mean, window) → (kl_mean, kl_zero) sums


def linear_calibration(records: list[ActivationRecord], sims: list[list[float] | None]) -> tuple[float, float]:
    """Least-squares (a, b) of true ≈ a·sim + b over the given records; (0, mean) for a constant
    simulation; (0, 0) with no usable record."""
    pairs = [(r.activations, s) for r, s in zip(records, sims, strict=True) if s is not None]
    if not pairs:
        return 0.0, 0.0
    y = np.concatenate([np.asarray(a, dtype=np.float64) for a, _ in pairs])
    x = np.concatenate([np.asarray(s, dtype=np.float64) for _, s in pairs])
    if np.ptp(x) == 0:
        return 0.0, float(y.mean())
    a, b = np.polyfit(x, y, 1)
    return float(a), float(b)


def choose_windows(records: list[ActivationRecord], sims: list[list[float] | None],
                   windows_per_kind: dict[str, int]) -> list[tuple[ActivationRecord, list[float]]]:
    """The first `windows_per_kind[kind]` records of each kind that have a simulation."""
    out, taken = [], {k: 0 for k in windows_per_kind}
    for record, sim in zip(records, sims, strict=True):
        if sim is None or taken.get(record.kind, 0) >= windows_per_kind.get(record.kind, 0):
            continue
        if record.token_ids is None:
            raise ConfigError("the ablation scorer needs token ids on the records (NeuronSet windows.parquet "
                              "`token_ids`, loaded by harness.records.load_set); these records have none")
        taken[record.kind] += 1
        out.append((record, sim))
    return out


def kl_from_logits(clean_logits: torch.Tensor, clean_probs: torch.Tensor, patched_logits: torch.Tensor) -> torch.Tensor:
    """KL(clean ‖ patched) of the next-token distributions, summed over positions, per row
    (patched [rows, tokens, vocab], clean [rows or 1, tokens, vocab] or [tokens, vocab] → [rows], float64).

    With d = clean − patched logits, centred by its clean-expectation m (any constant shift of
    d leaves the KL unchanged), and p the clean probabilities:
    KL = E_p[d] + log E_p[exp(−d)] = E_p[d] + log1p(E_p[expm1(−d)]). Written in the small
    quantity d, float32 keeps ~1e-6 relative precision down to the tiny KLs single neurons
    cause (a difference of two float32 log-softmaxes would not), without float64 copies of the
    logits; the two terms cancel to first order, so both are kept."""
    d = clean_logits - patched_logits  # clean_* may be [tokens, vocab], broadcast over rows
    spec = "tv,rtv->rt" if clean_probs.dim() == 2 else "rtv,rtv->rt"
    d.sub_(torch.einsum(spec, clean_probs, d)[..., None])
    first = torch.einsum(spec, clean_probs, d).double()
    d.neg_().expm1_()
    second = torch.log1p(torch.einsum(spec, clean_probs, d).double())
    return (first + second).sum(-1)


@torch.no_grad()
def ablation_scores(batch, context: RunContext | None = None,
                    windows_per_kind: dict[str, int] | None = None, batch_size: int = 8,
                    device: str = "cpu") -> list[dict[str, float]]:
    windows_per_kind = dict(windows_per_kind if windows_per_kind is not None else {"top": 5, "random": 5})
    subject = (context or RunContext()).subject(device)  # the run's: loaded once, digest-checked
    digest = subject.weights_digest

    # Per neuron: its windows and the patched rows it needs.
    windows: dict[tuple[int, ...], list[tuple]] = {}  # token ids → [(neuron index, variant, layer, neuron, values)]
    n_positions = np.zeros(len(batch))
    sums = {v: np.zeros(len(batch)) for v in ("simulated", "mean", "zero")}
    ref_keys: dict[int, list[tuple]] = {}
    pending: set[tuple] = set()  # reference KLs this call computes
    for i, s in enumerate(batch):
        n = s.neuron
        a, b = linear_calibration(n.calibration, s.calibration)
        ref_keys[i] = []
        for record, sim in choose_windows(n.test, s.test, windows_per_kind):
            ids = tuple(int(t) for t in record.token_ids)
            rows = windows.setdefault(ids, [])
            rows.append((i, "simulated", n.layer, n.neuron, torch.tensor(sim, dtype=torch.float64) * a + b))
            key = (digest, n.layer, n.neuron, float(n.mean), ids)
            ref_keys[i].append(key)
            if key not in _REFERENCE_KL and key not in pending:
                pending.add(key)
                rows.append((i, "mean", n.layer, n.neuron, torch.full((len(ids),), float(n.mean))))
                rows.append((i, "zero", n.layer, n.neuron, torch.zeros(len(ids))))
            n_positions[i] += len(ids)

    # Forward passes: each window's clean row then its patched rows, `batch_size` rows at a time
    # (windows of one length together).
    flat = []  # (window ids, None for clean | patch tuple)
    for ids in sorted(windows, key=len):
        flat.append((ids, None))
        flat.extend((ids, p) for p in windows[ids])
    clean: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}  # window → (logits, probs)
    fresh: dict[tuple, dict[str, float]] = {}
    with tqdm(total=len(flat), desc="ablation", unit="row", leave=False) as bar:
        lo = 0
        while lo < len(flat):
            length = len(flat[lo][0])
            chunk = []
            while lo < len(flat) and len(chunk) < batch_size and len(flat[lo][0]) == length:
                chunk.append(flat[lo])
                lo += 1
            ids = torch.tensor([w for w, _ in chunk], device=subject.device)
            patches = [(r, p[2], p[3], p[4]) for r, (_, p) in enumerate(chunk) if p is not None]
            with patch_rows(subject, patches):
                logits = subject.model(input_ids=ids).logits.float()
            for r, (w, p) in enumerate(chunk):
                if p is None:
                    clean[w] = (logits[r], torch.softmax(logits[r], -1))
            # a window's patched rows are contiguous: compare each run of them with its clean row
            r = 0
            while r < len(chunk):
                w, end = chunk[r][0], r
                while end < len(chunk) and chunk[end][0] == w:
                    end += 1
                first = r + (chunk[r][1] is None)
                if first < end:
                    kls = kl_from_logits(*clean[w], logits[first:end]).tolist()
                    for (_, (i, variant, layer, neuron, _)), kl in zip(chunk[first:end], kls):
                        if variant == "simulated":
                            sums["simulated"][i] += kl
                        else:
                            fresh.setdefault((digest, layer, neuron, float(batch[i].neuron.mean), w), {})[variant] = kl
                r = end
            # a window's clean logits are dropped once the chunk has passed its last row
            for w in [w for w in clean if w != chunk[-1][0]]:
                del clean[w]
            bar.update(len(chunk))
    for key, kls in fresh.items():
        _REFERENCE_KL[key] = (kls["mean"], kls["zero"])
    for i, keys in ref_keys.items():
        for key in keys:
            kl_mean, kl_zero = _REFERENCE_KL[key]
            sums["mean"][i] += kl_mean
            sums["zero"][i] += kl_zero

    out = []
    for i in range(len(batch)):
        if n_positions[i] == 0:
            out.append({m: float("nan") for m in ("score", "score_vs_zero", "kl_simulated", "kl_mean", "kl_zero")})
            continue
        kl = {v: sums[v][i] / n_positions[i] for v in sums}
        out.append({
            "score": 1 - kl["simulated"] / kl["mean"] if kl["mean"] > 0 else float("nan"),
            "score_vs_zero": 1 - kl["simulated"] / kl["zero"] if kl["zero"] > 0 else float("nan"),
            "kl_simulated": float(kl["simulated"]), "kl_mean": float(kl["mean"]), "kl_zero": float(kl["zero"]),
        })
    return out
