"""Model corruptions: the schema, the layer swap on real module lists (Llama-style and GPT-2), the
measures against independent computations, and the CLI sweep with its aggregation and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from harness.corrupt import Probe, corrupted, corruption_spec, measure
from harness.errors import ConfigError
from harness.paths import CONF_DIR, REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

MEASURE = {"n_windows": 2, "window": 16, "explain_fraction": 0.5, "batch_size": 2, "top_k": 3, "max_new_tokens": 3,
           "bootstrap_resamples": 200, "seeds": {"pools": 0, "windows": 0}, "prompts": ["The jury said", "One, two,"]}


@pytest.mark.parametrize("raw, order", [
    ({"kind": "none"}, list(range(6))),
    ({"kind": "skip_last", "n": 2}, [0, 1, 2, 3]),
    ({"kind": "skip_last", "n": 6}, []),
    ({"kind": "skip_first", "n": 2}, [2, 3, 4, 5]),
    ({"kind": "skip", "layers": [1, 4]}, [0, 2, 3, 5]),
    ({"kind": "skip", "start": 2, "stop": 4}, [0, 1, 4, 5]),
    ({"kind": "repeat", "layer": 3, "times": 3}, [0, 1, 2, 3, 3, 3, 4, 5]),
    ({"kind": "permute", "order": [3, 1, 2]}, [0, 3, 1, 2, 4, 5]),
])
def test_layer_orders(raw, order):
    assert list(corruption_spec(raw, 6).order) == order


def test_seeded_permutation_is_a_reproducible_shuffle_of_the_range():
    a = corruption_spec({"kind": "permute", "start": 1, "stop": 5, "seed": 3}, 6).order
    assert a == corruption_spec({"kind": "permute", "start": 1, "stop": 5, "seed": 3}, 6).order
    assert a[0] == 0 and a[5] == 5 and sorted(a[1:5]) == [1, 2, 3, 4]
    orders = {corruption_spec({"kind": "permute", "start": 1, "stop": 5, "seed": s}, 6).order for s in range(6)}
    assert len(orders) > 1


@pytest.mark.parametrize("raw, message", [
    ({"kind": "drop_everything"}, "unknown corruption kind 'drop_everything'; known:"),
    ({"n": 3}, "unknown corruption kind None"),
    ({"kind": ["skip_last"], "n": 3}, "unknown corruption kind ['skip_last']"),
    ({"kind": {"skip_last": 3}}, "unknown corruption kind {'skip_last': 3}"),
    ({"kind": "skip_last", "n": 7}, "n=7 must be in 0..6"),
    ({"kind": "skip_last", "n": True}, "must be an integer"),
    ({"kind": "skip_last", "n": "3"}, "must be an integer"),
    ({"kind": "skip_last"}, "n is required"),
    ({"kind": "skip_last", "n": 1, "path": "/etc/passwd"}, "unknown option corruption.path of corruption skip_last"),
    ({"kind": "skip", "layers": [1, 9]}, "layer index [9] out of range"),
    ({"kind": "skip", "layers": [1, 1]}, "repeat an index"),
    ({"kind": "skip", "layers": [1], "start": 0, "stop": 2}, "not both"),
    ({"kind": "skip", "start": 4, "stop": 2}, "0 <= start < stop <= 6"),
    ({"kind": "repeat", "layer": 2, "times": 9}, "times=9 must be in 1..8"),
    ({"kind": "repeat", "layer": -1}, "out of range"),
    ({"kind": "permute", "order": [1, 3]}, "contiguous block"),
    ({"kind": "permute", "order": [2, 1], "start": 0}, "not both"),
    ({"kind": "permute", "seed": -1}, "seed=-1"),
    ("skip_last", "must be an object"),
])
def test_invalid_corruptions_are_refused_naming_the_problem(raw, message):
    with pytest.raises(ConfigError) as exc:
        corruption_spec(raw, 6)
    assert message in str(exc.value)


def test_every_config_in_the_group_is_valid_for_smollm2():
    from omegaconf import OmegaConf

    for path in sorted((CONF_DIR / "corruption").glob("*.yaml")):
        spec = corruption_spec(OmegaConf.load(path), 30)
        assert spec.kind == path.stem


@pytest.fixture(scope="module")
def tiny_gemma3():
    """A random-init Gemma 3 text model with one sliding-window and one full-attention layer."""
    from harness.subject import load_subject

    return load_subject({"name": "tiny_gemma3", "source": "random_init", "model_type": "gemma3_text",
                         "tokenizer_from": "smollm2_135m", "seed": 0, "model_config": {
                             "vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                             "max_position_embeddings": 128, "sliding_window": 4,
                             "layer_types": ["sliding_attention", "full_attention"]}})


def _final_logits(subject, hidden):
    return subject.model.lm_head(subject.final_norm()(hidden))


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_gemma3"])
def test_skip_last_equals_reading_out_an_earlier_hidden_state(name, request, sample_ids):
    """Skipping the last layer gives the clean model's layer-0 output put through the final norm and
    unembedding: an independent computation (output_hidden_states of the intact model)."""
    subject = request.getfixturevalue(name)
    with torch.no_grad():
        clean = subject.model(input_ids=sample_ids, output_hidden_states=True, use_cache=False)
        expected = _final_logits(subject, clean.hidden_states[1])
        with corrupted(subject, corruption_spec({"kind": "skip_last", "n": 1}, 2).order):
            got = subject.model(input_ids=sample_ids, use_cache=False).logits
        after = subject.model(input_ids=sample_ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after, clean.logits, rtol=0, atol=0)  # restored


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_gemma3"])
def test_repeat_and_permute_run_the_layers_in_that_order(name, request, sample_ids):
    """Running layers [1, 0] (or [0, 0, 1]) equals feeding each layer's output to the next by hand,
    with hooks recording what each layer module received."""
    subject = request.getfixturevalue(name)
    layers = subject.neurons.layers
    for raw in ({"kind": "permute", "order": [1, 0]}, {"kind": "repeat", "layer": 0, "times": 2}):
        order = corruption_spec(raw, 2).order
        seen = []
        handles = [layer.register_forward_pre_hook(lambda m, args, kwargs, i=i: seen.append(i), with_kwargs=True)
                   for i, layer in enumerate(layers)]
        try:
            with torch.no_grad(), corrupted(subject, order):
                got = subject.model(input_ids=sample_ids, use_cache=False).logits
        finally:
            for h in handles:
                h.remove()
        assert seen == list(order)
        with torch.no_grad():
            clean = subject.model(input_ids=sample_ids, use_cache=False).logits
        assert not torch.allclose(got, clean)
    owner_layers = subject.model.transformer.h if name == "tiny_gpt2" else subject.model.model.layers
    assert list(owner_layers) == layers and subject.model.config.num_hidden_layers == 2


def test_gemma_layers_keep_their_attention_type_when_moved(tiny_gemma3, sample_ids):
    """Gemma picks each position's mask by `layer_types`: a moved layer must keep its own (the sliding
    layer its sliding-window mask), so each layer module gets the same mask as in the clean model."""
    masks = {0: [], 1: []}
    handles = [layer.register_forward_pre_hook(lambda m, args, kwargs, i=i: masks[i].append(kwargs["attention_mask"]),
                                               with_kwargs=True) for i, layer in enumerate(tiny_gemma3.neurons.layers)]
    try:
        with torch.no_grad():
            tiny_gemma3.model(input_ids=sample_ids, use_cache=False)
            with corrupted(tiny_gemma3, [1, 0]):
                tiny_gemma3.model(input_ids=sample_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    sliding_clean, sliding_moved = masks[0]
    assert sliding_clean is not None and torch.equal(sliding_clean, sliding_moved)
    assert not bool(sliding_clean[..., -1, 0].any())  # the window hides the first token from the last
    assert [m is None for m in masks[1]] == [masks[1][0] is None] * 2
    assert tiny_gemma3.model.config.layer_types == ["sliding_attention", "full_attention"]


def test_the_layer_list_is_restored_after_an_error(tiny_llama):
    with pytest.raises(RuntimeError), corrupted(tiny_llama, [1]):
        raise RuntimeError("boom")
    assert list(tiny_llama.model.model.layers) == tiny_llama.neurons.layers
    assert tiny_llama.model.config.num_hidden_layers == 2


def _probe(subject, sample_ids):
    prompts = MEASURE["prompts"]
    return Probe(windows=sample_ids, window_ids=["a@0", "b@0"], prompts=prompts,
                 prompt_ids=[subject.tokenizer(p, add_special_tokens=False).input_ids for p in prompts])


def test_measures_of_the_clean_model_are_zero_changes(tiny_llama, sample_ids):
    rows = pd.DataFrame(measure(tiny_llama, corruption_spec({"kind": "none"}, 2), _probe(tiny_llama, sample_ids),
                                MEASURE))
    head = rows[rows["prompt"].isna()].set_index("measure")["value"]
    assert head["loss"] == pytest.approx(head["loss_clean"], abs=1e-6)
    assert abs(head["loss_delta"]) < 1e-6 and abs(head["kl"]) < 1e-6
    readout = rows[rows["measure"] == "readout"]
    assert (readout["rank"] == 1).all()
    cont = rows[rows["measure"] == "continuation"].set_index("prompt")["text"]
    clean = rows[rows["measure"] == "continuation_clean"].set_index("prompt")["text"]
    assert cont.to_dict() == clean.to_dict()


def test_measures_match_an_independent_computation(tiny_llama, sample_ids):
    """Loss and KL of skip_last(n=1) recomputed here in float64 from the two models' logits."""
    rows = pd.DataFrame(measure(tiny_llama, corruption_spec({"kind": "skip_last", "n": 1}, 2),
                                _probe(tiny_llama, sample_ids), MEASURE))
    head = rows[rows["prompt"].isna()].set_index("measure")
    with torch.no_grad():
        clean = tiny_llama.model(input_ids=sample_ids, output_hidden_states=True, use_cache=False)
        p = clean.logits[:, :-1].double().log_softmax(-1)
        q = _final_logits(tiny_llama, clean.hidden_states[1])[:, :-1].double().log_softmax(-1)
    targets = sample_ids[:, 1:, None]
    loss_clean = -p.gather(-1, targets).squeeze(-1).mean(1)
    loss = -q.gather(-1, targets).squeeze(-1).mean(1)
    kl = (p.exp() * (p - q)).sum(-1).mean(1)
    assert head.loc["loss_clean", "value"] == pytest.approx(loss_clean.mean().item(), rel=1e-5)
    assert head.loc["loss", "value"] == pytest.approx(loss.mean().item(), rel=1e-5)
    assert head.loc["kl", "value"] == pytest.approx(kl.mean().item(), rel=1e-3, abs=1e-6)
    assert head.loc["kl", "value"] > 0
    lo, hi = head.loc["loss_delta", ["ci_lo", "ci_hi"]]
    assert lo <= head.loc["loss_delta", "value"] <= hi
    readout = rows[rows["measure"] == "readout"].iloc[0]
    shown = json.loads(readout["text"])
    assert len(shown["top"]) == MEASURE["top_k"] and readout["rank"] >= 1
    gains = [v for _, v in shown["gained"]]
    assert gains == sorted(gains, reverse=True)


def _corrupt(*args, cwd=REPO_ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "harness.corrupt", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


TINY = ["subject=tiny_llama", "corpus.max_documents=12", "measure.n_windows=3", "measure.window=16",
        "measure.max_new_tokens=2", "measure.bootstrap_resamples=100"]


@pytest.mark.heavy
def test_a_sweep_writes_each_job_and_an_aggregate_and_resumes(tmp_path):
    out = tmp_path / "sweep"  # parallel processes (joblib) first, the resume with the basic launcher
    proc = _corrupt("-m", "hydra/launcher=local", *TINY, "corruption=skip_last", "corruption.n=0,1,2",
                    f"hydra.sweep.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in "012":
        assert (out / job / "summary.json").is_file() and (out / job / "report.md").is_file()
    df = pd.read_parquet(out / "results.parquet")
    assert sorted(df["corruption"].unique()) == ["skip_last(n=0)", "skip_last(n=1)", "skip_last(n=2)"]
    # one row per corruption x measure (x prompt for the prompt measures)
    assert len(df) == 3 * (4 + 3 * 4)  # 4 window measures; readout and 2 continuations per default prompt
    report = (out / "report.md").read_text()
    assert "## First layer that gets it" in report and "`skip_last(n=2)` | 0 |" in report
    assert (out / "corruption.png").stat().st_size > 10_000
    again = _corrupt("-m", *TINY, "corruption=skip_last", "corruption.n=0,1,2", f"hydra.sweep.dir={out}")
    assert again.returncode == 0 and again.stdout.count("skipped (already complete)") == 3
    other = _corrupt(*TINY, "corruption=skip_first", "corruption.n=1", f"hydra.run.dir={out / '0'}")
    assert other.returncode == 2 and "different configuration" in other.stderr
    # the CLI aggregation gives the same table
    cli = subprocess.run([sys.executable, "-m", "harness.corrupt.report", str(out), "--out", str(tmp_path / "agg")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "agg" / "report.md").read_text() == report


@pytest.mark.heavy
def test_a_bad_corruption_on_the_command_line_is_one_clear_error(tmp_path):
    proc = _corrupt(*TINY, "corruption=repeat", "corruption.layer=5", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "layer index [5] out of range: the subject has layers 0..1" in proc.stderr
    proc = _corrupt(*TINY, "measure.n_windows=0", "measure.top_k=100000", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "measure.n_windows=0 must be a positive integer" in proc.stderr
    assert "measure.top_k=100000 must be an integer in [1, 100]" in proc.stderr


@pytest.mark.heavy
@pytest.mark.parametrize("overrides, message", [
    (["measure.window=200", "measure.max_new_tokens=2"], "measure.window=200 is longer than the context of tiny_gpt2 "
                                                         "(128 tokens)"),
    (["measure.window=16", "measure.max_new_tokens=120"], "measure.max_new_tokens=120: the longest prompt"),
])
def test_a_window_or_continuation_longer_than_the_context_is_one_clear_error(tmp_path, overrides, message):
    proc = _corrupt("subject=tiny_gpt2", "corpus.max_documents=12", "measure.n_windows=3", *overrides,
                    f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr


def test_the_report_shows_model_text_and_tokens_as_inert_markdown(tiny_llama, sample_ids):
    from harness.corrupt.report import report_markdown

    rows = pd.DataFrame(measure(tiny_llama, corruption_spec({"kind": "none"}, 2), _probe(tiny_llama, sample_ids),
                                MEASURE))
    hostile = "<script>x</script>\n# Heading | cell"
    rows.loc[rows["measure"] == "continuation", "text"] = hostile
    readout = rows["measure"] == "readout"
    rows.loc[readout, "text"] = [json.dumps({**json.loads(t), "top": [["<b>", 0.5]]}) for t in rows.loc[readout, "text"]]
    report = report_markdown(rows)
    assert "<" not in report  # no tag: every < is an entity
    assert "&lt;script&gt;x&lt;/script&gt; \\# Heading \\| cell" in report
    assert "'&lt;b&gt;' 0.500" in report  # a token as a quoted literal


@pytest.mark.slow
def test_smollm2_skip_last_raises_loss_and_none_changes_nothing(smollm2):
    ids = torch.tensor([smollm2.tokenizer("The Fulton County Grand Jury said Friday an investigation of Atlanta's "
                                          "recent primary election produced no evidence").input_ids[:16]])
    m = {**MEASURE, "max_new_tokens": 2}
    probe = Probe(windows=ids, window_ids=["a@0"], prompts=m["prompts"],
                  prompt_ids=[smollm2.tokenizer(p, add_special_tokens=False).input_ids for p in m["prompts"]])
    none = pd.DataFrame(measure(smollm2, corruption_spec({"kind": "none"}, 30), probe, m))
    skip = pd.DataFrame(measure(smollm2, corruption_spec({"kind": "skip_last", "n": 10}, 30), probe, m))
    value = {n: d[d["prompt"].isna()].set_index("measure")["value"] for n, d in (("none", none), ("skip", skip))}
    assert abs(value["none"]["kl"]) < 1e-5
    assert value["skip"]["kl"] > 1 and value["skip"]["loss_delta"] > 1
