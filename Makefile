# cfattr-monai: `make demo` runs the whole chain on phantoms and writes reports/demo; `make test` runs pytest.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FRESH ?= 0
# CPU threads of every demo stage: the documented demo figures were made with 2 (another count trains other weights)
THREADS ?= 2

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: on a CPU machine pip takes the local CPU wheel, on a GPU machine the CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m cfattr_monai.demo --out reports/demo --threads $(THREADS) $(if $(filter 1,$(FRESH)),--fresh,)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) reports/demo
