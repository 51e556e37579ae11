# `make train` / `make test` set up .venv on first use, then run. Extra arguments: make train ARGS="model=resnet18"
PYTHON := .venv/bin/python
ARGS ?=

.PHONY: train evaluate test test-fast lint format benchmark frontier setup clean slurm-up slurm-down slurm-test

$(PYTHON): pyproject.toml
	test -x $(PYTHON) || python3 -m venv .venv
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $(PYTHON)

setup: $(PYTHON)

train: $(PYTHON)
	$(PYTHON) train.py $(ARGS)

evaluate: $(PYTHON)
	$(PYTHON) evaluate.py $(ARGS)

# the suite in parallel, a worker per core (pytest-xdist; at most 8: each holds torch and starts training processes);
# the cluster tests run one at a time by slurm-test, as the one-node cluster takes its jobs
PYTEST := $(PYTHON) -m pytest -n auto --maxprocesses 8

test: $(PYTHON)
	$(PYTEST) -m "not cluster" $(ARGS)

# ruff: lint and formatting; mypy: types of the package; import-linter: the three layers import downwards only and
# no module cycles (all configured in pyproject.toml; ruff is also a pre-commit hook: pre-commit install)
lint: $(PYTHON)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
	$(dir $(PYTHON))lint-imports

format: $(PYTHON)
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

test-fast: $(PYTHON)
	$(PYTEST) -m "not slow and not cluster" $(ARGS)

# A one-node Slurm cluster on this machine (as root on Debian; tools/slurm.sh installs what is missing), for
# python train.py -m hydra/launcher=slurm ...; slurm-test runs the tests that need it (marked cluster)
slurm-up:
	tools/slurm.sh up

slurm-down:
	tools/slurm.sh down

slurm-test: $(PYTHON) slurm-up
	$(PYTHON) -m pytest -m cluster $(ARGS)

benchmark: $(PYTHON)
	$(PYTHON) benchmarks/throughput.py $(ARGS)

# The README's speed/accuracy figure: six recipes trained one after another (the longest job here),
# then plotted into docs/frontier.png. On the shared data copy: make frontier ARGS=data.verify=false
frontier: $(PYTHON)
	@test ! -e outputs/multiruns/frontier || { echo "error: outputs/multiruns/frontier exists: move it away \
	first (a new sweep would write over its runs)" >&2; exit 1; }
	$(PYTHON) train.py -m experiment=seed_baseline,default,fast,fast85,fast90,fast94 \
		hydra.sweep.dir=outputs/multiruns/frontier $(ARGS)
	$(PYTHON) benchmarks/frontier.py outputs/multiruns/frontier

# docs/results.md from docs/results*.csv (add runs first: python benchmarks/results.py add RUN_DIR ...)
.PHONY: results
results: $(PYTHON)
	$(PYTHON) benchmarks/results.py $(ARGS)

clean:
	rm -rf .venv outputs .pytest_cache
