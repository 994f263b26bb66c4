"""A *planted* neuron: a copy of the random-init `tiny_llama` subject edited so that one neuron
fires (≈10–32) on the pronoun tokens " he", " she", " it", " they" (and capitalised) and is exactly
0 elsewhere, recorded on Brown windows. Its true explanation is known, so it checks scoring rules
(tests/scoring/test_scoring_families.py) and simulators (`python -m harness.check_simulator`)."""

from __future__ import annotations

import copy

import numpy as np
import torch

from harness.errors import ConfigError
from harness.records import ActivationRecord, NeuronRecord
from harness.subject import Subject, neuron_map_for, state_dict_digest

PLANTED = (0, 7)  # (layer, neuron)
AXIS = 5          # the residual dimension that carries the planted token class
CLASS = [" he", " she", " it", " they", " He", " She", " It", " They"]
EXPLANATIONS = {
    "true": 'the pronouns "he", "she", "it", "they"',
    "articles": 'articles "the", "a", "an"',
    "prepositions": 'prepositions "of", "to", "in"',
    "verbs": 'verbs "was", "said", "had"',
}


def plant(subject: Subject) -> Subject:
    """A copy of the tiny Llama whose neuron PLANTED fires on the pronoun tokens CLASS only.

    The class's embeddings get a large component on residual axis AXIS (every other embedding
    none, and layer 0's attention writes nothing there); the neuron's gate and up rows read only
    that axis, so it computes silu(x)·x of it: ~30 on a class token, exactly 0 elsewhere. Its
    output column writes a large fixed direction, and the unembedding is sharpened, so replacing
    its activation visibly changes next-token distributions."""
    model = copy.deepcopy(subject.model)
    layer, n = PLANTED
    ids = [subject.tokenizer(w, add_special_tokens=False).input_ids for w in CLASS]
    if not all(len(i) == 1 for i in ids):
        raise ConfigError(f"the planted class {CLASS} must be single tokens in {subject.name}'s tokenizer")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, AXIS] = 0.0
        emb[[i[0] for i in ids], AXIS] = 3.0
        block = model.model.layers[layer]
        block.self_attn.o_proj.weight[AXIS, :] = 0.0
        for proj in (block.mlp.gate_proj, block.mlp.up_proj):
            proj.weight[n, :] = 0.0
            proj.weight[n, AXIS] = 1.0
        out = torch.randn(block.mlp.down_proj.weight.shape[0], generator=g)
        block.mlp.down_proj.weight[:, n] = 0.5 * out / out.norm()
        model.lm_head.weight.mul_(20.0)
    return Subject(name="tiny_llama_planted", model=model, tokenizer=subject.tokenizer,
                   neurons=neuron_map_for(model), weights_digest=state_dict_digest(model))


@torch.no_grad()
def planted_neuron(subject: Subject, documents: list[str]) -> NeuronRecord:
    """A NeuronRecord of the planted neuron of `subject` (made by `plant`), recorded from 64-token
    windows of `documents`: explain from the first half of the documents, calibration/test from the
    second (10 top and 10 random test windows)."""
    windows, pools = [], []
    for d, text in enumerate(documents):
        tokens = subject.tokenizer(text, add_special_tokens=False).input_ids
        for start in range(0, len(tokens) - 63, 64):
            windows.append(tokens[start:start + 64])
            pools.append("explain" if d < len(documents) // 2 else "scoring")
    ids = torch.tensor(windows)
    layer, n = PLANTED
    acts = torch.cat([subject.record(ids[lo:lo + 64], [layer])[layer][..., n] for lo in range(0, len(ids), 64)])
    acts = acts.numpy().astype(np.float64)
    pools = np.array(pools)

    def rec(w: int, kind: str) -> ActivationRecord:
        return ActivationRecord(tokens=[subject.tokenizer.decode([t]) for t in windows[w]],
                                activations=acts[w].tolist(), doc_id=f"w{w}", start=0, kind=kind,
                                token_ids=list(windows[w]))

    rng = np.random.default_rng(0)
    maxima = acts.max(1)
    scoring = np.flatnonzero(pools == "scoring")
    top = scoring[np.argsort(-maxima[scoring], kind="stable")][:15]
    rest = rng.permutation(np.setdiff1d(scoring, top))
    explain_pool = np.flatnonzero(pools == "explain")
    return NeuronRecord(
        layer=layer, neuron=n, mean=float(acts.mean()), variance=float(acts.var()), max_activation=float(acts.max()),
        explain=[rec(w, "top") for w in explain_pool[np.argsort(-maxima[explain_pool])][:5]],
        calibration=[rec(w, "top") for w in top[::3]] + [rec(w, "random") for w in rest[:5]],
        test=[rec(w, "top") for i, w in enumerate(top) if i % 3] + [rec(w, "random") for w in rest[5:15]])
