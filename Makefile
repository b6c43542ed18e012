# Two entry points: `make demo` (the main job on built-in defaults) and `make test`. See README.md.
PYTHON ?= python3
WORK   ?= work/demo

.PHONY: install demo test test-slow benchmarks clean

install:            ## torch's CPU wheel first (a bare `torch` requirement pulls CUDA), then bevport with its extras
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[export,dev]'
	$(PYTHON) -m pip install --quiet --no-deps nuscenes-devkit==1.2.0   # its deps: the `nuscenes` extra (pyproject)

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

# With both images built, the host needs only invoke and the Docker SDK (no torch); otherwise the demo runs here.
demo:               ## synthetic checkpoint + scenes -> convert (Docker if there, else local) -> bundle + picture
	@if docker image inspect bevport-export:$(VERSION) bevport-runtime:$(VERSION) >/dev/null 2>&1; then \
		$(PYTHON) -m pip install --quiet -e '.[host]'; else $(MAKE) --no-print-directory install PYTHON=$(PYTHON); fi
	$(PYTHON) -m invoke demo

test: install       ## the suite README and CI run (slow and Docker tests have their own targets)
	$(PYTHON) -m pytest -q

test-slow: install
	$(PYTHON) -m pytest -q -m slow

benchmarks:         ## the scripts in benchmarks/ -> benchmarks/results/*.json (= invoke benchmarks)
	$(PYTHON) -m invoke benchmarks

clean:
	rm -rf work benchmarks/results .pytest_cache
