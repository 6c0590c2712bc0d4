# Two commands do all the set-up on a fresh machine (see README):
#   make scan INPUT=... OUTPUT=...   installs what is missing, then runs the main job (a scan)
#   make test                        installs what is missing, then runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install scan predict test bench bench-scan

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: otherwise pip resolves it as a dependency and pulls a CUDA build.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)

scan: $(STAMP)
	@test -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "usage: make scan INPUT=<dir|s3://bucket/prefix|manifest> OUTPUT=<dir|s3://...>"; exit 2; }
	$(BIN)/trufor-scan scan "$(INPUT)" --output "$(OUTPUT)" $(ARGS)

predict: $(STAMP)
	@test -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "usage: make predict INPUT=<file|dir|glob> OUTPUT=<dir>"; exit 2; }
	$(BIN)/trufor-scan predict --input "$(INPUT)" --output "$(OUTPUT)" $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_large.py $(ARGS)

bench-scan: $(STAMP)
	$(BIN)/python bench/bench_scan.py $(ARGS)
