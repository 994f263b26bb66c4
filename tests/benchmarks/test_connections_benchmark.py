"""Top-k input and output tokens for every SmolLM2-135M neuron (30 layers × 1536 = 46,080).

Reports (printed, and in the benchmark's extra_info) the wall time, the peak resident memory of
the computation, and the speed-up over a per-neuron loop (one neuron per matrix product) timed
on a sample in the same run and extrapolated. Runs its code once under the default
`--benchmark-disable`; `pytest tests/benchmarks --benchmark-enable -s` shows the report.
"""

import resource
import sys
import time
from pathlib import Path

import pytest
import torch

from baselines.connection_weights import ConnectionWeights
from harness.subject import load_subject, subject_config

K = 10
SAMPLE = (15, list(range(0, 1536, 48)))  # 32 neurons of layer 15 for the per-neuron loop


def _status_mb(field: str) -> float | None:
    """A memory figure from /proc/self/status (Linux), in MiB; None elsewhere."""
    status = Path("/proc/self/status")
    return int(status.read_text().split(f"{field}:")[1].split()[0]) / 1024 if status.exists() else None


def _reset_peak_rss() -> bool:
    """Reset the resident-set high-water mark VmHWM (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def all_token_tops(weights: ConnectionWeights):
    return [(weights.input_tokens(layer, None, K), weights.output_tokens(layer, None, K))
            for layer in range(weights.neurons.n_layers)]


@pytest.mark.slow
def test_all_neurons_top_tokens(benchmark):
    weights = ConnectionWeights(load_subject(subject_config("smollm2_135m")))
    n_layers, n_per = weights.neurons.n_layers, weights.neurons.n_neurons
    n_neurons, n_vocab = n_layers * n_per, len(weights.embed)

    rss_before = _status_mb("VmRSS")
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    tops = benchmark.pedantic(all_token_tops, args=(weights,), rounds=1, iterations=1)
    vectorised_s = time.perf_counter() - t0
    # The computation's own peak where VmHWM could be reset, else the whole process's peak.
    peak = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (
        2**20 if sys.platform == "darwin" else 2**10)

    layer, sample = SAMPLE
    t0 = time.perf_counter()
    loop = [(weights.input_tokens(layer, [n], K), weights.output_tokens(layer, [n], K)) for n in sample]
    loop_s_per_neuron = (time.perf_counter() - t0) / len(sample)
    for (one_in, one_out), n in zip(loop, sample):  # the same answers both ways
        assert torch.equal(one_in.index[0], tops[layer][0].index[n])
        assert torch.equal(one_out.index[0], tops[layer][1].index[n])

    vec_s_per_neuron = vectorised_s / n_neurons
    info = {
        "neurons": n_neurons, "vocab": n_vocab, "k": K, "chunk": weights.chunk, "threads": torch.get_num_threads(),
        "vectorised_s": round(vectorised_s, 1),
        "vectorised_ms_per_neuron": round(1e3 * vec_s_per_neuron, 3),
        "per_neuron_loop_ms_per_neuron": round(1e3 * loop_s_per_neuron, 2),
        "per_neuron_loop_extrapolated_s": round(loop_s_per_neuron * n_neurons),
        "speedup_vectorised_vs_loop": round(loop_s_per_neuron / vec_s_per_neuron, 1),
        "rss_before_mb": rss_before and round(rss_before),
        "peak_rss_mb" if reset else "process_peak_rss_mb": round(peak),
        "peak_minus_before_mb": round(peak - rss_before) if reset else None,
        # What holding every weight would take instead: vocab × neurons float32, per read/write matrix.
        "full_vocab_x_neurons_matrix_mb": round(n_vocab * n_neurons * 4 / 2**20),
    }
    benchmark.extra_info.update(info)
    print("\nconnection weights, all SmolLM2 neurons: " + ", ".join(f"{k}={v}" for k, v in info.items()))
