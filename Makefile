# The whole set-up on a fresh machine with Python >= 3.10:
#   make demo   runs the main notebook on the embedded data (creates .venv when missing)
#   make test   runs the test suite, notebooks in smoke mode (creates .venv when missing)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medalign-installed
export TQDM_MININTERVAL ?= 5
# OpenMP's default spin-waiting makes torch's 2 threads ~10x slower when other processes share
# the cores (measured by `medalign bench s2d-generate`); passive waiting costs little when idle.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test venv data clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[notebooks,dev]'
	@touch $(STAMP)

# The main job: S2D-ALIGN's curriculum, its ablations and baselines on IU-Phantom (built on first
# use), about 10 minutes on 2 CPU cores. Outputs: the executed notebook, figures, metrics.json.
demo: $(STAMP)
	@mkdir -p outputs
	$(BIN)/papermill notebooks/05_s2d_full.ipynb outputs/05_s2d_full.ipynb \
		-p output_dir outputs/05_s2d_full --cwd . --log-output --no-progress-bar
	@echo "executed notebook: outputs/05_s2d_full.ipynb, metrics: outputs/05_s2d_full/metrics.json"

# Two pytest-xdist workers: most of the suite is single-threaded Python (notebook kernels, data
# builds), so on 2 cores two workers take 0.66 x the time of one (22.2 -> 14.6 min measured).
TEST_WORKERS ?= 2
test: $(STAMP)
	TQDM_DISABLE=1 MEDALIGN_SMOKE=1 $(BIN)/python -m pytest -q --timeout 900 -n $(TEST_WORKERS) --dist worksteal

data: $(STAMP)
	$(BIN)/medalign data build iu-phantom --out outputs/data/iu-phantom --size 224
	$(BIN)/medalign data build phantom-5x200 --out outputs/data/phantom-5x200 --size 224

clean:
	rm -rf outputs .pytest_cache
