# Two commands do all the set-up on a fresh machine (see README):
#   make scan [INPUT=... OUTPUT=...] installs what is missing, then runs the main job (a sweep) on
#                                    INPUT, by default the embedded demo archive
#   make test                        installs what is missing, then runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser scan predict test docs bench bench-scan bench-backends bench-mantranet bench-float bench-sweep bench-precision bench-gpu bench-flops bench-report bench-duplicates bench-calibration bench-evaluate

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: otherwise pip resolves it as a dependency and pulls a CUDA build.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	# IMDL-BenCo's metric functions are the tests' independent check of `evaluate`: installed without
	# its dependencies (it pins numpy<2 and pulls timm); the test loads only its evaluation/temp.py.
	$(BIN)/pip install -q --no-deps imdlbenco==0.1.45
	touch $@

install: $(STAMP)

# The review page's tests drive a real Chromium: Debian's package (Playwright downloads no browser
# here). Installed when missing and this machine can (root with apt-get); elsewhere those tests skip
# and say why (CI sets TRUFOR_REQUIRE_BROWSER=1, so there a missing browser fails).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: Chromium not installed (needs root and apt-get): the browser tests will skip"

# The embedded default: photographs from scikit-image plus a splice, a repost and bad files,
# generated offline. The main job is the nightly command: run it twice and the second scans nothing.
# Exit status 3 (finished, some error rows) is expected there (it holds a truncated file) and
# passes; with your own INPUT, make reports it as the error it is.
DEMO := out/demo-archive
SCAN_INPUT := $(or $(INPUT),$(DEMO))

out/.demo-archive.made: $(STAMP) jobs/demo_archive.py
	$(BIN)/trufor-scan make-demo-archive --out $(DEMO)
	touch $@

scan: $(STAMP) $(if $(INPUT),,out/.demo-archive.made)
	$(BIN)/trufor-scan sweep "$(SCAN_INPUT)" --output "$(or $(OUTPUT),out/scan)" $(ARGS) \
	  $(if $(INPUT),,|| { rc=$$?; [ $$rc -eq 3 ] && echo "(demo: exit 3 as expected, its truncated file is an error row)"; })

predict: $(STAMP)
	@test -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "usage: make predict INPUT=<file|dir|glob> OUTPUT=<dir>"; exit 2; }
	$(BIN)/trufor-scan predict --input "$(INPUT)" --output "$(OUTPUT)" $(ARGS)

# The parity tiers once more on other kernels than the CPU picks by itself (oneDNN's SSE4.1 code,
# ATen's scalar code): every machine then checks float64 exactness and the float32 tolerances on a
# second instruction set, on both paths, with the odd-sized fixture (333x517: padding, ragged tiles
# and bands). The 1536x2048 case and pristine1 run once, in the first pass: the suite must stay
# under 15 minutes on 2 cores.
# OpenVINO (the CPU backend, trufor_core.backends) fails under oneDNN's SSE4.1 limit, which its own
# oneDNN reads too (measured; the backend refuses it there): its parity test reruns limited to AVX2.
OTHER_KERNELS := ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default
OPENVINO_OTHER_KERNELS := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2

test: $(STAMP) browser
	$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)
	$(OTHER_KERNELS) $(BIN)/python -m pytest -q -m "parity and not slow" -k "((synthetic_odd or recipe) and not openvino) or (mantranet_f32 and (tiny or crop256) and not intermediates)" $(PYTEST_ARGS)
	$(OPENVINO_OTHER_KERNELS) $(BIN)/python -m pytest -q -m "parity and not slow" -k "openvino" $(PYTEST_ARGS)

# The generated reference (docs/cli.md from the parser, docs/schema.md from the row schema); a
# test fails when the committed copies are out of date.
docs: $(STAMP)
	$(BIN)/python -m jobs.docs

bench: $(STAMP)
	$(BIN)/python bench/bench_large.py $(ARGS)

bench-scan: $(STAMP)
	$(BIN)/python bench/bench_scan.py $(ARGS)

# The model through each backend (eager, OpenVINO, torch.compile) at 0.4, 1 and 3 MP and the scan's batch.
bench-mantranet: $(STAMP)
	$(BIN)/python bench/bench_mantranet.py $(ARGS)

bench-backends: $(STAMP)
	$(BIN)/python bench/bench_backends.py $(ARGS)

bench-float: $(STAMP)
	$(BIN)/python bench/float_agreement.py $(ARGS)

# The pipeline's own cost (listing, planning, a stand-in sweep), then the results store at scale
# (commit latency, planning and `top` at 1M and 10M rows, compaction, a year of nightly commits).
bench-sweep: $(STAMP)
	$(BIN)/python bench/bench_sweep.py $(ARGS)
	$(BIN)/python bench/bench_store.py $(STORE_ARGS)

bench-precision: $(STAMP)
	$(BIN)/python bench/precision.py $(ARGS)

# No install: GPU machines lent to us are bare (torch, numpy, Pillow, pyarrow only). Uses this
# project's venv when there is one, else the machine's python3.
bench-gpu:
	PYTHONPATH=. $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) bench/bench_gpu.py $(ARGS)

bench-flops: $(STAMP)
	$(BIN)/python bench/flops.py $(ARGS)

bench-report: $(STAMP)
	$(BIN)/python bench/bench_report.py $(ARGS)

bench-calibration: $(STAMP)
	$(BIN)/python bench/bench_calibration.py $(ARGS)

# faiss only for the baselines (our index is numpy): installed by this target, not by `make install`.
bench-duplicates: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt 'faiss-cpu>=1.8'
	$(BIN)/python bench/bench_duplicates.py $(ARGS)

# `evaluate` on 10k generated labelled rows with maps and masks: images/s, driver and worker memory.
bench-evaluate: $(STAMP)
	$(BIN)/python bench/bench_evaluate.py $(ARGS)
