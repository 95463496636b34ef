# fsfsl: every target bootstraps a local .venv once (a second call installs nothing).
# Main job:  make reproduce [PROFILE=auto|cpu|cpu-finetune|paper|smoke] [SEEDS=n (default: the profile's)] [SPLITS=1]
#            [RUN_ARGS='--backbone resnet18 -p CONTROLS=False']
# Tests:     make test

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fsfsl-installed
PROFILE ?= auto
SEEDS   ?=
SPLITS  ?= 1
RUN_ARGS ?=
export JUPYTER_PATH := $(CURDIR)/$(VENV)/share/jupyter

.PHONY: setup reproduce test test-browser test-slow browser-deps lint bench lab explore clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (fsfsl)"
	git config filter.nbstripout.clean "$(CURDIR)/$(BIN)/nbstripout" 2>/dev/null || true
	git config filter.nbstripout.smudge cat 2>/dev/null || true
	git config diff.ipynb.textconv "$(CURDIR)/$(BIN)/nbstripout -t" 2>/dev/null || true
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/python -m fsfsl_utils.run --profile $(PROFILE) $(if $(SEEDS),--seeds $(SEEDS)) --splits $(SPLITS) $(RUN_ARGS)

test: $(STAMP) browser-deps
	$(BIN)/python -m pytest

test-browser: $(STAMP) browser-deps
	$(BIN)/python -m pytest -m browser

# The CPU dry runs of the scripts for a lent GPU (gpu_check.sh, paper_rerun.py, device_checks.sh with
# pack_check.py and ray_gpu_check.py, ray_bundle.py), about 3 minutes: run before spending device time.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# The browser test drives JupyterLab in Debian's Chromium (Playwright's own browser download
# cannot work offline). Installed here when missing and we are root; otherwise say how.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: the browser test needs Chromium: sudo apt-get install chromium"; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

lint: $(STAMP)
	$(BIN)/ruff check fsfsl_utils tests notebooks benchmarks

# JupyterLab on the project: notebooks/ and runs/ both reachable.
lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR) --ServerApp.default_url=/lab/tree/notebooks \
	  $(if $(filter 0,$(shell id -u)),--allow-root,)

# A finished run, live and read-only: make explore RUN=runs/<folder> (writes only under runs/interactive).
explore: $(STAMP)
	@test -n "$(RUN)" || { echo "usage: make explore RUN=runs/<folder>"; exit 2; }
	$(BIN)/python -m fsfsl_utils.explore_run "$(RUN)"

clean-venv:
	rm -rf $(VENV)
