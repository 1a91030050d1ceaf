# The two set-up commands of the README. Each creates the virtual environment on first use.
VENV ?= .venv
PYTHON ?= python3
export OMP_NUM_THREADS ?= 1
export RAY_AUTH_MODE ?= disabled

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

.PHONY: install run detox test
install: $(VENV)/.installed

run: $(VENV)/.installed  ## the main job: every method on the default task, 5 seeds, leaderboard in runs/leaderboards/ (publish: bench publish)
	$(VENV)/bin/bench run --methods all --task synthetic

detox: $(VENV)/.installed  ## the mission's command on the embedded models (fast profile, one re-RLHF seed per method): over an hour cold on 2 cores
	$(VENV)/bin/bench run --methods all --task detox --profile fast --seeds 1

test: $(VENV)/.installed  ## every test, the slow end-to-end runs included
	$(VENV)/bin/python -m pytest
