# make install: venv, package, dev deps, warmed numba cache (rembg's).  make test: the suite.
# make system-deps: chromium, PHP and Node's `request` for the page and client tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp

.PHONY: install system-deps test bench lint demo pictures clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# rembg (dev: the parity tests) imports pymatting, which compiles with
	# numba on first import (~50 s); pay it here, once.
	$(PY) -c "import pymatting"
	touch $(STAMP)

# apt-get as root when missing; otherwise it names what to install.
system-deps:
	@.ci/system-deps

test: install system-deps
	$(PY) -m pytest -q tests

bench: install
	$(PY) bench/bench.py

lint: install
	$(VENV)/bin/ruff check bgrm tests bench docs

# The README's pictures (docs/*.jpg), made by the real tool on the fixtures.
pictures: install
	$(PY) docs/pictures.py

demo: install
	$(VENV)/bin/bgrm image fixtures/astronaut.png fixtures/chelsea.png fixtures/rocket.jpg -o demo --json

clean:
	rm -rf $(VENV) demo build *.egg-info
