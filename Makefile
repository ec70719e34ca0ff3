# Two commands on a fresh machine: `make demo` and `make test`.
# Both bootstrap .venv from pyproject.toml with the versions pinned in constraints.txt, and
# install the system tools the project uses where they can be installed (see sysdeps).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo-output
# Debian packages the project uses (each provides a command of the same name):
#   fitsverify  the FITS standard checker `hlsp validate` runs on every FITS file of a release;
#   chromium    the headless browser the tests open the HTML release report in (`hlsp report`).
SYSTEM_PACKAGES := fitsverify chromium

# pytest-xdist worker processes for the tests (the end-to-end tests share one engine run between them)
TEST_WORKERS ?= 2

.PHONY: demo check test bench bench-survey install sysdeps lock schema clean

install: $(STAMP) sysdeps

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

# System packages: installed with apt-get when make runs as root on a Debian-like system.
# Elsewhere nothing fails here: `hlsp validate` reports the checks it could not run, the
# demo still succeeds, and --strict (the default where CI=true) refuses a missing check.
sysdeps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian package(s):$$missing"; \
	  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1; }; then \
	    echo "warning: could not install$$missing; hlsp validate will report the checks that need it as not run"; \
	  fi; \
	else \
	  echo "note:$$missing not installed (as root: apt-get install$$missing); hlsp validate will report the checks that need it as not run, the report test is skipped"; \
	fi

demo: $(STAMP) sysdeps
	$(BIN)/hlsp demo --outdir $(DEMO_DIR)

# The fast tier: lint, formatting and every test that runs no pipeline (tests/conftest.py
# classifies them by the fixtures they use). What a developer runs on every change.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist worksteal --durations=15

# The README's test command and CI's: the fast tier, then the end-to-end tier on TEST_WORKERS
# processes (work stealing: a long test does not hold the others back).
test: check sysdeps
	$(BIN)/python -m pytest -m slow -n $(TEST_WORKERS) --dist worksteal --durations=15

bench: $(STAMP) sysdeps
	$(BIN)/python -m tests.benchmarks

# The engine's bookkeeping (plan, all-cached run) at survey scale, 1,000 to 12,880 header-only
# exposures (a few minutes): the survey section of docs/performance.md and docs/survey-scale.png.
bench-survey: $(STAMP)
	$(BIN)/python -m tests.benchmarks.survey_scale

# Regenerate the manifest JSON Schema, field reference and plan-diff JSON Schema in docs/ (a test checks they are current).
schema: $(STAMP)
	$(BIN)/hlsp schema --outdir docs

# Re-resolve the pinned versions after a dependency change in pyproject.toml.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade "pip>=24"
	.lock-venv/bin/python -m pip install --quiet ".[test]"
	.lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^hlsp-release' > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache
