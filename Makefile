# The README's two commands: `make book` and `make test`. Each sets up what it needs.
PROFILE ?= full
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup data book test serve bench clean

$(STAMP): pyproject.toml
	@echo "make: creating $(VENV) and installing the pinned dependencies (log: $(VENV)/pip.log)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --disable-pip-version-check -e '.[test,bench,ray]' > $(VENV)/pip.log 2>&1 \
		|| { tail -n 30 $(VENV)/pip.log; echo "make: pip install failed (full log: $(VENV)/pip.log)"; exit 1; }
	@# quantus, zennit-crp and, on a Python older than zennit asks for, zennit, without their
	@# requirements (which the set above already pins): see the notes in pyproject.toml
	@$(PY) -m pip install --disable-pip-version-check --no-deps --ignore-requires-python 'quantus==0.6.0' \
		'zennit-crp==0.6.0' 'zennit==1.0.0' >> $(VENV)/pip.log 2>&1 \
		|| { tail -n 30 $(VENV)/pip.log; echo "make: pip install failed (full log: $(VENV)/pip.log)"; exit 1; }
	@touch $@

setup: $(STAMP)

data: setup
	@$(PY) scripts/fetch-data

book: data
	@$(PY) scripts/build $(if $(CONFIG),--config $(CONFIG),--profile $(PROFILE))

test: data
	@$(PY) scripts/setup-browser
	@$(PY) -m pytest

SITE := $(or $(XAI_BUILD),_build)/html

serve:
	@test -f $(SITE)/index.html || { echo "make: no site yet; run 'make book' first"; exit 1; }
	@echo "Serving http://localhost:8000 (Ctrl-C to stop)"
	@$(PY) -m http.server --directory $(SITE) 8000

bench: data
	@$(PY) scripts/bench --profile $(PROFILE)

clean:
	rm -rf _build book/_generated
