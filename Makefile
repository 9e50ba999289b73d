# The commands the README names. Every target creates .venv and installs into it when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
# Stage commands in dvc.yaml run `python`: make it the venv's.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv install browser demo test bench mutate scale screenshot lint docs

venv: install

install: $(VENV)/.installed browser

# The web tests and `make screenshot` drive Debian's Chromium; as root, install it when missing.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	else echo "note: install the Debian packages chromium and chromium-driver (as root) for" \
	  "tests/test_web.py and make screenshot"; fi

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

# Figures go to metrics/bench.json; each benchmark replaces only its own keys. Then every figure
# is shown beside the committed one, and the target fails on any more than 15% worse.
bench: install
	$(PY) bench/fetch.py --out metrics/bench.json
	$(PY) bench/data.py --out metrics/bench.json
	$(PY) bench/serve.py --out metrics/bench.json
	$(PY) bench/features.py --out metrics/bench.json
	$(PY) bench/train.py --out metrics/bench.json
	$(PY) bench/crossval.py --out metrics/bench.json
	$(PY) bench/compare.py --results metrics/bench.json

# Mutation testing of the core modules against their fast tests (metrics/mutation.json); about
# an hour on 2 cores, not part of `make test`. MUTATE_ARGS passes options (--modules geo ...).
mutate: install
	$(PY) bench/mutation.py $(MUTATE_ARGS)

# Each stage's time, memory and disk at about 5k, 25k and 100k photos, in temporary clones
# (metrics/scale.json, plots/scale.png); about an hour on 2 cores. SCALE_ARGS passes options.
scale: install
	$(PY) bench/scale.py $(SCALE_ARGS)

# The web demo in headless Chromium, on the exported model and a photo of data/raw.
screenshot: install
	$(PY) -m geoloc.web_check --model models/export --out plots/web_demo.png

lint: install
	$(VENV)/bin/ruff check geoloc stages tests bench experiments docs/hooks

# The manual (docs/, mkdocs.yml) as a site in site/; --strict fails on any warning: a broken
# link or anchor, a page left out of the nav. tests/test_docs.py runs the same build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
