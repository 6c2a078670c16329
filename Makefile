# gpufaas: `make test` and `make demo` work from a fresh clone (they create .venv first).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install layout typecheck test test-fast package-check bench demo results lint clean

install: $(STAMP)

# NOTE: torch==2.13.0 is installed first and on its own: on this machine it resolves to a local CPU
# build, while a looser range lets pip pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(MAKE) --no-print-directory layout
	touch $(STAMP)

# The gpufaas.* namespace as directory symlinks to the folders, for mypy, pyright and editors (see pyproject)
layout:
	mkdir -p $(VENV)/layout/gpufaas
	for d in platform gateway loadgen functions; do ln -sfn "$(CURDIR)/$$d" $(VENV)/layout/gpufaas/$$d; done

# NOTE: the tests that start no gateway, worker, Docker container or Ray cluster run one pytest worker per
# core (xdist), each with one torch/OpenMP thread, so processes x threads stays at the core count; the
# others run after them, one at a time, since they size their own processes to the machine.
IN_PROCESS := not live and not docker and not ray and not gpu

typecheck: install
	$(BIN)/mypy -p gpufaas.platform -p gpufaas.gateway -p gpufaas.loadgen

test: install
	$(BIN)/lint-imports
	$(BIN)/ruff check --quiet platform gateway loadgen functions tests
	$(BIN)/mypy -p gpufaas.platform -p gpufaas.gateway -p gpufaas.loadgen
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n auto -m "$(IN_PROCESS)" --durations=10
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not ($(IN_PROCESS))" --durations=10

# unit and property tests, under a minute: no subprocess gateways, Docker, Ray or long simulations.
test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n auto -m "not slow and $(IN_PROCESS)" -x

# the wheel, installed into a clean venv outside the checkout, runs sim, up, deploy and invoke
package-check: install
	deploy/package-check.sh

bench: install
	$(BIN)/gpufaas bench all

demo: install
	$(BIN)/python -m gpufaas.gateway.demo

# Regenerate the README results block, docs/results-pareto.png and docs/results.json (every scenario x policy x
# load x seed, one worker per CPU; pass e.g. RESULTS_ARGS='-j 4 --scenarios chain' to narrow it).
results: install
	$(BIN)/gpufaas results --json-out docs/results.json $(RESULTS_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
