# Lightbox: `make run` starts the app; `make test` runs the whole suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501
export LIGHTBOX_HOME ?= $(CURDIR)/workspace

.PHONY: run test test-fast e2e bench worker ray test-ray clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	$(PY) -m engine demo-setup --quiet
	$(PY) -m streamlit run streamlit_app.py --server.port $(PORT) --server.headless true

test: $(VENV)/.dev-installed
	$(PY) -m pytest tests/unit tests/app -q

e2e: $(VENV)/.dev-installed
	$(PY) -m pytest tests/e2e -q

# about 3 minutes even on a busy 2-core CPU; `$(PY) -m engine bench --long` for both models at full length
bench: $(VENV)/.installed
	$(PY) -m engine bench --json

worker: $(VENV)/.installed
	$(PY) -m engine worker

# The optional Ray extra (`engine worker --executor ray`); `make test-ray` runs its tests.
$(VENV)/.ray-installed: $(VENV)/.installed requirements-ray.txt
	$(PY) -m pip install --quiet -r requirements-ray.txt
	touch $@

ray: $(VENV)/.ray-installed

test-ray: $(VENV)/.dev-installed $(VENV)/.ray-installed
	$(PY) -m pytest tests/unit/test_ray_executor.py tests/unit/test_ray_search.py -q

clean:
	rm -rf $(VENV) workspace .pytest_cache
