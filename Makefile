PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test demo bench bench-store bench-quality clean

## One command sets everything up: the CPU torch wheel first (a looser pin pulls CUDA), then the package.
setup:
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev]"
	@if command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/doc/python3.11/html ]; then \
		(apt-get install -y -q python3.11-doc >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q python3.11-doc >/dev/null 2>&1)) \
		|| echo "note: could not install python3.11-doc; 'make demo' then needs --docs pointing at an HTML folder"; \
	fi

test:
	$(PYTHON) -m pytest -q

demo:
	$(PYTHON) -m llama_index_deepmemory.cli demo

bench-store:
	$(PYTHON) benchmarks/bench_store.py

bench-quality:
	$(PIP) install -e ".[benchmark]"
	$(PIP) install --no-deps llama-index-finetuning==0.4.2
	$(PYTHON) benchmarks/bench_quality.py

clean:
	rm -rf .pytest_cache build *.egg-info
