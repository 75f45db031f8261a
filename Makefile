# Every target does its own setup on a fresh machine with only Python 3 and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ddn-installed

.PHONY: setup data lab notebooks test test-unit test-notebooks bench clean

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

# Fashion-MNIST from Debian's package (used by the image experiment); needs root or sudo.
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST present in /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist \
	  || echo "WARNING: could not install dataset-fashion-mnist; the image experiment (and notebook 13 at full size) will stop with instructions"; \
	else echo "WARNING: no apt-get: install Fashion-MNIST by hand (see README)"; fi

# The main job: open the numbered notebooks in JupyterLab.
lab: setup data
	$(BIN)/jupyter lab notebooks/

# Execute every notebook at full size, headless (outputs go to build/notebooks).
notebooks: setup data
	$(BIN)/python tools/execute_notebook.py --timeout 3600 --output-dir build/notebooks \
	  notebooks/[0-9]*.ipynb

# The whole test suite: unit tests, then every notebook under nbval at smoke size.
test: setup data test-unit test-notebooks

test-unit: setup
	$(BIN)/python -m pytest -p no:nbval -q tests

test-notebooks: setup
	DDN_SMOKE=1 $(BIN)/python -m pytest -q --nbval-lax --nbval-cell-timeout=600 -p no:cacheprovider notebooks

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build .pytest_cache
