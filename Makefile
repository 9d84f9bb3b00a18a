# The two set-up commands of README.md. Both create .venv with everything the
# project needs, so a fresh clone needs nothing installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/seed

.PHONY: demo test install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Trains the seed model on synthetic_interactions, evaluates, checkpoints and
# prints a result table. Re-running resumes from WORKDIR's latest checkpoint.
demo: install
	$(PY) -m mmfusion.main --config=experiments/configs/seed.py --workdir=$(WORKDIR)

test: install
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) workdirs
