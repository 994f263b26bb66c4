"""`hf_local` with any causal LM: a model directory or a GGUF file by `path`, `device` and
`dtype` options flowing through to the loaded model, for the backend and the logprob simulators."""

import numpy as np
import pytest
import torch

from harness.errors import AssetError, ConfigError
from harness.llm import make_backend
from harness.llm.hf_local import load_local_model, resolve_device, resolve_dtype
from harness.records import ActivationRecord
from harness.simulate import make_simulator
from harness.subject import subject_config
from harness.subjects.gguf import gguf_path

RECORD = ActivationRecord(tokens=["We", " drank", " tea"], activations=[0, 0, 10])


@pytest.fixture(scope="module")
def tiny_dir(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    tiny_llama.model.save_pretrained(path)
    tiny_llama.tokenizer.save_pretrained(path)
    return path


def test_device_and_dtype_rules():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    for bad in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(ConfigError, match="unknown device"):
            resolve_device(bad)
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda").type == "cuda"


@pytest.mark.usefixtures("one_thread")
def test_a_model_directory_with_dtype_flows_to_backend_and_simulator(tiny_dir, tiny_llama):
    backend = make_backend({"backend": "hf_local", "model": "tiny", "path": str(tiny_dir), "dtype": "bfloat16"})
    assert backend.identity() == {"path": str(tiny_dir), "dtype": "bfloat16"}
    model, tokenizer = backend._load()
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu" and tokenizer.padding_side == "left"
    # the simulator reads logits of the same bfloat16 model; float32 from the same directory is the reference
    cfg = {"kind": "all_at_once", "max_context": 4096,
           "llm": {"backend": "hf_local", "model": "tiny", "subject": None, "path": str(tiny_dir)}}
    half = make_simulator({**cfg, "llm": {**cfg["llm"], "dtype": "bfloat16"}})
    full = make_simulator(cfg)
    a, b = half.simulate("hot drinks", [RECORD])[0], full.simulate("hot drinks", [RECORD])[0]
    assert half._model.dtype == torch.bfloat16 and full._model.dtype == torch.float32
    assert np.allclose(a, b, atol=0.5) and a != b  # bfloat16 rounding, same model
    with pytest.raises(ConfigError, match="exactly one"):
        make_backend({"backend": "hf_local", "model": "x", "subject": "smollm2_135m", "path": str(tiny_dir)})
    with pytest.raises(AssetError, match="does not exist"):
        load_local_model(path=str(tiny_dir / "missing.gguf"))
    with pytest.raises(AssetError, match="could not load"):
        load_local_model(path=str(tiny_dir.parent / "no-such-dir"))


@pytest.mark.usefixtures("one_thread")
def test_logprobs_carry_the_top_alternatives(tiny_dir, tmp_path):
    """With logprobs=True each generated token has its 20 likeliest alternatives as {text: logprob}
    (the openai backend's `top`); greedy decoding picked the likeliest of them."""
    from harness.llm import LLM
    from harness.llm.cache import CallCache

    llm = LLM(make_backend({"backend": "hf_local", "model": "tiny", "path": str(tiny_dir)}),
              cache=CallCache(tmp_path / "c.sqlite"))
    messages = [{"role": "user", "content": "Is tea a drink?"}]
    [result] = llm.chat_batch([messages], temperature=0.0, max_tokens=3, logprobs=True)
    assert len(result.logprobs[0]) == result.output_tokens > 0
    for entry in result.logprobs[0]:
        top = entry["top"]
        assert 0 < len(top) <= 20 and all(lp <= 0 for lp in top.values())
        assert max(top, key=top.get) == entry["token"] and top[entry["token"]] == pytest.approx(entry["logprob"])
    [plain] = llm.chat_batch([messages], temperature=0.0, max_tokens=3)
    assert plain.logprobs is None and plain.texts == result.texts


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_gguf_file_by_path_is_the_subject_model(smollm2):
    """SmolLM2's GGUF given as a file path loads to the same model as the `smollm2_135m` subject."""
    gguf = gguf_path(subject_config("smollm2_135m"))
    model, tokenizer = load_local_model(path=str(gguf))
    ids = torch.tensor([smollm2.tokenizer.encode("The cat sat on the mat", add_special_tokens=False)])
    assert tokenizer.encode("The cat sat on the mat", add_special_tokens=False) == ids[0].tolist()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, smollm2.model(ids).logits, atol=1e-4)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_qwen_coder_option_assembles_and_simulates():
    """The optional Qwen2.5-Coder-0.5B-Instruct simulator model (`make qwen`): its six chunks
    assemble to the pinned sha256 (checked on load) and all_at_once runs on it."""
    sim = make_simulator({"kind": "all_at_once", "llm": {"backend": "hf_local", "model": "qwen25_coder_05b_instruct",
                                                         "subject": "qwen25_coder_05b"}})
    [masses] = sim.masses('the word "tea"', [RECORD])
    assert sim._model.config.model_type == "qwen2"
    assert sim._values.second[10] is not None  # Qwen writes "10" as "1","0" too
    assert masses.shape == (3, 11) and (masses.sum(1) > 0).all() and (masses.sum(1) <= 1 + 1e-5).all()
