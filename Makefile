# `make demo` and `make test` each build .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast docs venv pretrain pretrain-clip pretrain-vilt clean

$(STAMP): pyproject.toml requirements/constraints.txt requirements/no-deps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from the local CPU wheel; the constraint keeps it there.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[dev,avalanche,ray]'
	$(BIN)/pip install -q --no-deps -r requirements/no-deps.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/continual run configs/compat.yaml --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest --durations=15 tests

# The unit-level subset (tests marked `fast`) for the edit-test loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m fast tests

# The documentation site into site/ (not committed); --strict: a broken link or reference fails the build.
docs: $(STAMP)
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[docs]'
	$(BIN)/mkdocs build --strict --site-dir site

pretrain: $(STAMP)
	$(BIN)/continual pretrain --out continual/checkpoints/tiny-base

pretrain-clip: $(STAMP)
	$(BIN)/continual pretrain --host dual-encoder --out continual/checkpoints/tiny-clip

pretrain-vilt: $(STAMP)
	$(BIN)/continual pretrain --host vilt --out continual/checkpoints/tiny-vilt

clean:
	rm -rf $(VENV) site
