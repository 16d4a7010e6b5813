# Fresh machine: `make demo` sets up .venv (CPU) and runs the main job; `make test` sets up and tests.
VENV ?= .venv
BIN := $(VENV)/bin
export MUJOCO_GL ?= egl

.PHONY: setup demo demo-sim test test-all lint figures interop

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: setup  # the default leaderboard on the embedded bundle (benchmarks/suites/default.yaml)
	$(BIN)/wmgym bench leaderboard --out outputs/leaderboard

demo-sim: setup  # the scripted experts in the ground-truth sim (GIF grid)
	$(BIN)/wmgym demo sim

test: setup interop
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

interop:  # the published clients and lerobot, whose pins clash with ours, in their own venvs
	bash scripts/interop_venv.sh
	bash scripts/lerobot_venv.sh

test-all: setup interop
	$(BIN)/python -m pytest -q --durations=10

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

figures: setup
	$(BIN)/python -m benchmarks.sim_figures
