# The commands the README names. Every target creates .venv and installs into it when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
# Stage commands in dvc.yaml run `python`: make it the venv's.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv install demo test bench lint

venv: install

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, torchvision, geoloc"
	touch $@

demo: install
	dvc repro
	$(PY) -m json.tool metrics/eval.json

test: install
	$(PY) -m pytest

# Figures go to metrics/bench.json; each benchmark replaces only its own keys.
bench: install
	$(PY) bench/fetch.py --out metrics/bench.json
	$(PY) bench/data.py --out metrics/bench.json

lint: install
	$(VENV)/bin/ruff check geoloc stages tests bench
