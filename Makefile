# Set-up and everyday commands. `make test` and `make demo` work on a fresh clone: they create
# .venv and install everything first (torch + torchvision as a matched pair, see README).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torchvision from PyPI is built against PyPI's torch; the local CPU-only torch wheel breaks
# `import torchvision` (and with it timm), so the two are pinned as a pair.
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install system-deps test lint demo bench bench-loop bench-learning clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PAIR)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# espeak-ng synthesises the embedded speech corpus used by the audio demo (Debian package).
system-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) || \
	  echo "warning: could not install espeak-ng; the audio default corpus needs it"; }

test: install system-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: install system-deps
	HF_HUB_OFFLINE=1 $(PY) pretraining/demo.py


# pretraining throughput and MFU: base audio v1/v2, image v2, text v2 (full steps); prints one JSON object
# (add flags with `make bench BENCH_ARGS="--mixed_precision bf16 --compile"`)
bench: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/pretrain_throughput.py $(BENCH_ARGS)

# the whole pretraining loop vs the pure step: the real scripts on written FLAC (44.1 kHz) / JPEG / text files
# with 2 DataLoader workers, logging and checkpointing, tiny 2.0 models (3-5 min on 2 cores; on a shared
# machine add --threads 1); one JSON object (`make bench-loop BENCH_ARGS="--size base --num_workers 8"`)
bench-loop: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/pretrain_loop.py $(BENCH_ARGS)

# probe accuracy vs pretraining time, v1 vs v2, every modality (about 16-20 min on 2 cores); JSON + PNG in
# learning_efficiency_output/ (add flags with `make bench-learning BENCH_ARGS="--budget_seconds 60"`)
bench-learning: install system-deps
	HF_HUB_OFFLINE=1 $(PY) benchmarks/learning_efficiency.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# regenerate the committed remote code (modeling/remote-code/, what --remote_code exports ship) from the package
# source, then review and commit the diff; `$(PY) -m data2vec_hf.remote_code_cli --check` only compares
# (tests/test_remote_code.py fails too when they are stale). See docs/remote_code.md.
.PHONY: remote-code
remote-code: install
	$(PY) -m data2vec_hf.remote_code_cli --write
