# The README's two commands: `make bench` and `make test`.
PYTHON ?= python3
VENV   := .venv
BENCH  := $(VENV)/bin/bench
STAMP  := $(VENV)/.cvbench-installed
# dev: tests and linters; fleet: Ansible for `bench fleet` (a fleet member, such as the test
# host, installs with EXTRAS=dev: it runs `bench run`, not Ansible)
EXTRAS ?= dev,fleet
RUNS   ?= results/runs
REPORTS ?= results/report

.PHONY: venv bench test test-slow test-host provision lint docs unit integration clean

## venv: create .venv and install cvbench with its dependencies (no-op when current)
venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[$(EXTRAS)]'
	@touch $(STAMP)

## provision: install and start what the backends need (apt packages, daemons); idempotent
provision:
	scripts/provision

## bench: run the startup scenario on every backend that works here, then report on it
## (BACKENDS=host,ns,docker: only those)
bench: provision venv
	@set -e; log=$$(mktemp); \
	$(BENCH) run startup --out $(RUNS) $(if $(BACKENDS),--backends $(BACKENDS)) | tee $$log; \
	result=$$(sed -n 's/^result: //p' $$log); rm -f $$log; \
	test -n "$$result" || { echo "make bench: the run wrote no result" >&2; exit 1; }; \
	report=$(REPORTS)/$$(basename $$result .json); \
	$(BENCH) report $$result --out $$report >/dev/null; \
	echo; echo "result: $$result"; echo "charts and report: $$report/ (report.md)"

## lint: ruff and mypy
lint: venv
	$(VENV)/bin/ruff check harness runtimes tests docs
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict docs/gen.py
	cd fleet && ../$(VENV)/bin/ansible-lint -q

## docs: build the documentation site from docs/ into site/ (strict: a warning, a broken
## link or a page missing from the nav fails it); the reference pages are generated from
## the plug-ins at every build (docs/gen.py, a mkdocs hook), never committed
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

## test: provision, then lint, the docs and the test suite (unit + integration on every backend),
## without the heaviest end-to-end checks (marker `slow`: stacks of VMs, ramps of thousands,
## the full application matrix), which `make test-slow` runs
test: provision venv lint docs
	$(VENV)/bin/pytest -q -m "not slow and not testhost" tests

## test-slow: the heaviest end-to-end checks only (run them before calling a change done)
test-slow: provision venv
	$(VENV)/bin/pytest -q -m slow tests

## test-host: in a Debian 13 guest (scripts/testhost: systemd, cgroup v2, current Docker
## and Podman): provision, ns's cgroup v2 and ns tests, a startup run on ns, docker and
## podman; its result comes back to results/testhost/, the guest is removed
test-host: provision venv
	$(VENV)/bin/pytest -q -m testhost tests/testhost

unit: venv
	$(VENV)/bin/pytest -q tests/unit

integration: provision venv
	$(VENV)/bin/pytest -q tests/integration

clean:
	rm -rf $(VENV) build site *.egg-info .mypy_cache .ruff_cache .pytest_cache
