"""all_at_once simulation speed on SmolLM2-135M: simulated tokens per second with and without
prefix key/value reuse, against the model's bare batched forward throughput on the same prompts
(prefix + window, no readout; goal ≥0.8×), and the number of forward passes against
one_at_a_time (goal ≥30× fewer; deterministic, so asserted). Timings are printed, not asserted.
Runs once under the default `--benchmark-disable`; `pytest tests/benchmarks -s` shows the report.
"""

import time

import pytest
import torch

from harness.records import ActivationRecord
from harness.simulate import AllAtOnceSimulator, OneAtATimeSimulator

N_WINDOWS, WINDOW, BATCH = 8, 64, 8
EXPLANATION = "words about the weather, especially rain and storms"
TEXT = ("The storm had been building over the hills since noon, and by evening the rain came down in sheets. "
        "Farmers brought the cattle into the barns while the river rose against its banks. In the town, the "
        "shopkeepers pulled their awnings in and the children watched lightning from the windows. The next "
        "morning the sky was clear and cold, the fields were flooded, and the newspapers counted the damage: "
        "three bridges, a church roof, and most of the orchard along the southern road. The mayor promised help "
        "from the county, but the farmers had heard such promises before and began to repair the fences "
        "themselves, working from dawn until the light failed, while a thin drizzle returned in the afternoon.")


def windows(tokenizer) -> list[ActivationRecord]:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    out = []
    for k in range(N_WINDOWS):
        start = (k * 17) % (len(ids) - WINDOW)
        toks = [tokenizer.decode([i]) for i in ids[start:start + WINDOW]]
        out.append(ActivationRecord(tokens=toks, activations=[float(t.strip() in {"storm", "rain", "drizzle"})
                                                              for t in toks]))
    return out


def _timed(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.slow
def test_all_at_once_throughput_and_passes(benchmark, smollm2, tiny_llama):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tok = smollm2.model, smollm2.tokenizer
        records = windows(tok)
        n_tokens = sum(len(r.tokens) for r in records)
        reuse = AllAtOnceSimulator(batch_size=BATCH, model=model, tokenizer=tok)
        plain = AllAtOnceSimulator(batch_size=BATCH, reuse_prefix=False, model=model, tokenizer=tok)
        reuse.simulate(EXPLANATION, records[:1])  # warm-up

        # the bare forward: the same prompts (prefix + window lines), one batched call, no readout
        prefix = reuse.prefix_ids(EXPLANATION)
        prompts = [prefix + reuse.window_ids(r)[0] for r in records]
        width = max(map(len, prompts))
        batch = torch.tensor([p + [reuse._values.newline] * (width - len(p)) for p in prompts])

        @torch.no_grad()
        def bare():
            for lo in range(0, len(batch), BATCH):
                model(input_ids=batch[lo:lo + BATCH])

        t_bare = _timed(bare)
        t_plain = _timed(lambda: plain.simulate(EXPLANATION, records))
        t_reuse = benchmark.pedantic(lambda: _timed(lambda: reuse.simulate(EXPLANATION, records)),
                                     rounds=1, iterations=1)

        # forward passes (sequences through the model): same prompts on the same tokenizer, counted
        # on the tiny random-init model, since the count does not depend on the weights
        a = AllAtOnceSimulator(batch_size=BATCH, max_context=10**6, model=tiny_llama.model, tokenizer=tok)
        one = OneAtATimeSimulator(batch_size=32, model=tiny_llama.model, tokenizer=tok)
        a.simulate(EXPLANATION, records)
        one.simulate(EXPLANATION, records[:2])
        passes_one = one.forward_passes * len(records) // 2  # one prompt per token, every window WINDOW tokens
    finally:
        torch.set_num_threads(threads)

    report = {
        "simulated_tokens": n_tokens,
        "bare_forward_tok_s": n_tokens / t_bare,
        "all_at_once_reuse_tok_s": n_tokens / t_reuse,
        "all_at_once_no_reuse_tok_s": n_tokens / t_plain,
        "reuse_vs_bare": t_bare / t_reuse,
        "no_reuse_vs_bare": t_bare / t_plain,
        "forward_passes_all_at_once": a.forward_passes,
        "forward_passes_one_at_a_time": passes_one,
        "fewer_passes": passes_one / a.forward_passes,
    }
    benchmark.extra_info.update(report)
    print(f"\nall_at_once on SmolLM2-135M, {N_WINDOWS} windows x {WINDOW} tokens, batch {BATCH}, "
          f"prompt prefix {len(prefix)} tokens:\n"
          f"  bare batched forward          {report['bare_forward_tok_s']:8.1f} simulated tok/s\n"
          f"  all_at_once, prefix reused    {report['all_at_once_reuse_tok_s']:8.1f} tok/s "
          f"= {report['reuse_vs_bare']:.2f}x bare (goal >= 0.8x)\n"
          f"  all_at_once, no prefix reuse  {report['all_at_once_no_reuse_tok_s']:8.1f} tok/s "
          f"= {report['no_reuse_vs_bare']:.2f}x bare\n"
          f"  forward passes: {a.forward_passes} vs one_at_a_time {passes_one} = "
          f"{report['fewer_passes']:.0f}x fewer (goal >= 30x)")
    assert a.forward_passes == N_WINDOWS and passes_one == N_WINDOWS * WINDOW
    assert report["fewer_passes"] >= 30
