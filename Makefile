PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

TORCH_VERSION ?= 2.13.0
# PyTorch's CPU-only wheel index: no CUDA packages. `make setup TORCH_INDEX=` takes pip's default index
# instead (on Linux x86_64 that is the CUDA build plus about twenty nvidia/triton packages); a CUDA
# index such as https://download.pytorch.org/whl/cu126 picks a CUDA version.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PYTHON_DOCS := /usr/share/doc/python3.11/html

.PHONY: setup setup-torch setup-docs test demo bench bench-store bench-quality clean

## One command sets everything up: torch first (CPU build by default), the package, Python's HTML docs.
setup: setup-torch
	$(PIP) install -e ".[dev]"
	@$(MAKE) --no-print-directory setup-docs

setup-torch:
	@$(PYTHON) -c "import sys; sys.exit(sys.prefix == sys.base_prefix)" || echo "note: no virtual environment is active;" \
		"'python3 -m venv .venv && . .venv/bin/activate' first keeps these packages out of your system Python"
	@if [ -n "$(TORCH_INDEX)" ]; then \
		echo "== pip install torch==$(TORCH_VERSION) --index-url $(TORCH_INDEX)"; \
		$(PIP) install --timeout 15 --retries 0 --index-url "$(TORCH_INDEX)" "torch==$(TORCH_VERSION)" \
		|| { echo "== $(TORCH_INDEX) cannot be reached: pip install torch==$(TORCH_VERSION) from pip's own index"; \
		     $(PIP) install "torch==$(TORCH_VERSION)"; }; \
	else \
		echo "== pip install torch==$(TORCH_VERSION) (pip's own index)"; $(PIP) install "torch==$(TORCH_VERSION)"; \
	fi
	@$(PYTHON) -c "import torch; print('== installed torch', torch.__version__, '(CUDA ' + torch.version.cuda + ' build)' if torch.version.cuda else '(CPU-only build)')"

setup-docs:
	@if [ -d $(PYTHON_DOCS) ]; then \
		echo "== Python's HTML docs for 'make demo': $(PYTHON_DOCS) (already installed)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "== $$SUDO apt-get install -y python3.11-doc  (Python's HTML docs for 'make demo', into $(PYTHON_DOCS))"; \
		$$SUDO apt-get install -y python3.11-doc || { echo "== $$SUDO apt-get update"; $$SUDO apt-get update && $$SUDO apt-get install -y python3.11-doc; } \
		|| echo "note: could not install python3.11-doc; 'make demo' then needs --docs pointing at an HTML folder"; \
	else \
		echo "note: no apt-get here; 'make demo' needs Python's HTML docs: pass --docs pointing at an HTML folder"; \
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
