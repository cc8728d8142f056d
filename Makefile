# dema-lab: `make test` and `make demo` work on a fresh clone (they install what they need).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -c constraints.txt
STAMP  := $(VENV)/.installed
# Debian packages: EGL/OSMesa for headless MuJoCo rendering, Chromium for the browser tests.
APT_PKGS := libegl1 libgl1-mesa-dri libosmesa6 chromium fonts-dejavu-core
# The tests run in pytest-xdist workers, one more than there are cores (a test that waits on a
# browser, a server or a child process leaves its core to another), an idle worker taking tests from
# a busy one's share (worksteal); XDIST= runs them in one process.
XDIST ?= -n $(shell echo $$(( $$(nproc) + 1 ))) --dist worksteal

.PHONY: test test-fast demo bench study screenshots venv apt clean-venv

venv: $(STAMP)

# (Re)install when the dependency declarations change. pip installs torch==2.13.0 (the CPU build,
# which pip finds on this machine's disk) and uv; uv installs the rest, under the same
# constraints.txt, in about a third of pip's time (40 s against 127 s here); with torch already
# installed and pinned, uv never looks for another torch build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --quiet --upgrade pip
	$(PIP) --quiet torch==2.13.0 uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) -c constraints.txt -e '.[dev,minari,cluster,atari,memory,deploy]'
	touch $(STAMP)

apt:
	./scripts/ensure-apt.sh $(APT_PKGS)

# Everything, the browser (headless Chromium) and notebook tests included: a missing browser fails.
test: apt $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEMA_LAB_REQUIRE_BROWSER=1 $(PY) -m pytest -q $(XDIST) --durations=25

# The inner loop (under 3 minutes on 2 cores): all but the tests marked browser, notebook and slow
# (pyproject.toml declares the markers; tests/helpers/markers.py lists the slow tests).
test-fast: apt $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -m "not browser and not notebook and not slow" $(XDIST)

# The main job: default dataset, a small DeMa, a small K sweep, then the dashboard (Ctrl-C stops it).
demo: apt $(STAMP)
	$(VENV)/bin/dema-lab demo --store store

# Speed and memory figures (not tests): benchmarks/RESULTS.md (scan, training, inference, attention,
# memory), RESULTS-logging.md (logging overhead, store size per episode) and RESULTS-dashboard.md
# (server time of one scrub step on the demo run, which it trains first if the store lacks it).
bench: apt $(STAMP)
	$(PY) benchmarks/run_all.py
	$(PY) benchmarks/bench_scan.py
	$(PY) benchmarks/bench_logging.py > benchmarks/RESULTS-logging.md
	$(PY) benchmarks/bench_data.py > benchmarks/RESULTS-data.md
	$(VENV)/bin/dema-lab demo --no-serve --no-sweep --store store
	$(PY) benchmarks/bench_dashboard.py --store store > benchmarks/RESULTS-dashboard.md
	# the live page in Chromium: printed; RESULTS.md keeps the hand-written section
	$(PY) benchmarks/bench_live.py --store store

# The README's screenshots, from the demo store (trained first when missing) in headless Chromium.
screenshots: apt $(STAMP)
	$(VENV)/bin/dema-lab demo --no-serve --store store
	$(PY) scripts/screenshots.py --store store --out docs/screenshots

# The paper's study on the embedded suite (hours on 2 cores; resumable): docs/study-report.md.
study: apt $(STAMP)
	./scripts/study.sh

clean-venv:
	rm -rf $(VENV)
