# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
SEDAUG := $(VENV)/bin/sedaug
STAMP  := $(VENV)/.installed-stamp
DATA   ?= data
RUNS   ?= runs
# Demo: six short epochs (150 steps) of the small synthetic DESED for `none` and `baseline`, with a half-width CRNN in
# PyTorch's default init (the full-size one needs ~1 s a step on a 2-core CPU, and dcase20's init sits on the
# base-rate plateau for ~700 steps), eager (`optim.compile: auto`: 150 steps do not pay back a compile; measured:
# `none` trained in 85 s eager, 133 s compiled). Overridable, e.g.
#   make demo DEMO_EPOCHS=30 DEMO_RECIPES="none vat_latent"
DEMO_EPOCHS  ?= 6
DEMO_MODEL   ?= --set model.cnn_filters=[8,16,32,64,64,64,64] --set model.rnn_hidden=64 --set model.init=pytorch
DEMO_RECIPES ?= none baseline
FULL_EPOCHS  ?= 200

.PHONY: install lock test lint demo data table-full demo-sweep bench clean

# Installs exactly the locked set (every package, version and hash in requirements.lock) into a fresh .venv.
$(STAMP): requirements.lock pyproject.toml
	python3 -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --progress-bar off --no-deps --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --progress-bar off --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# Regenerates requirements.lock from pyproject.toml (run it after changing a dependency there, then commit both).
# One lock for Linux, macOS and Windows, Python >= 3.10; setuptools is locked too, to build the editable install.
UV_VERSION ?= 0.13.9
lock:
	python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --progress-bar off uv==$(UV_VERSION)
	echo "setuptools>=68" | .venv-lock/bin/uv pip compile pyproject.toml - --extra dev --extra sweep --universal \
	  --generate-hashes --python-version 3.10 --quiet --custom-compile-command "make lock" -o requirements.lock

install: $(STAMP)

# Two worker processes (pytest-xdist; a module's tests stay in one, so its module fixtures are built once), one torch
# thread each: 6.5 to 8 minutes instead of 10 on the 2-core CPU. `make test TEST_WORKERS=0` runs them in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

lint: $(STAMP)
	$(VENV)/bin/ruff check sedaug tests benchmarks

# Synthetic DESED (small) and its features; both steps skip work already done.
data: $(STAMP)
	$(SEDAUG) prepare-desed --synthetic --size small --out $(DATA)/desed
	$(SEDAUG) extract-mels --data $(DATA)/desed --out $(DATA)/features

# Install, data, a few recipes trained briefly and evaluated on `eval` (best.pt by synthetic_valid F1), then
# Table 1; each stage is timed.
demo:
	@set -e; t0=$$(date +%s); stage() { s=$$(date +%s); name=$$1; shift; "$$@"; echo "[demo] $$name: $$(( $$(date +%s) - s )) s"; }; \
	stage install $(MAKE) --no-print-directory install; \
	stage prepare-desed $(SEDAUG) prepare-desed --synthetic --size small --out $(DATA)/desed; \
	stage extract-mels $(SEDAUG) extract-mels --data $(DATA)/desed --out $(DATA)/features; \
	rm -rf $(RUNS)/demo; \
	for r in $(DEMO_RECIPES); do \
	  stage "train $$r" $(SEDAUG) train recipes/$$r.yaml --runs $(RUNS)/demo --set optim.epochs=$(DEMO_EPOCHS) \
	    --set optim.rampup_epochs=1 --set consistency.rampup_epochs=1 $(DEMO_MODEL) \
	    --set data.features=$(DATA)/features; \
	  stage "evaluate $$r" $(SEDAUG) evaluate $(RUNS)/demo/$$r/seed0 --split eval; \
	done; \
	$(SEDAUG) table $(RUNS)/demo --metrics macro,psds,psds_ct --ci 95; \
	echo "[demo] total: $$(( $$(date +%s) - t0 )) s"

# The paper's protocol on the real DESED (sweeps/table1.yaml, docs/sweeps.md): DESED=/path/to/DESED (the DCASE 2020
# layout) is prepared (manifest in $(DATA)/desed-real) and its features extracted ($(DATA)/features-real), then each
# row's hyper-parameters are selected on synthetic_valid, the winners trained on 3 seeds and evaluated on eval, and
# Table 1 printed with the selected values (days of GPU time: see `sedaug sweep sweeps/table1.yaml --dry-run`).
# Run again, it resumes. On a cluster: make table-full DESED=... SWEEP_SET="--address HOST:PORT" (docs/cluster.md).
SWEEP_SET ?=
DESED ?=
table-full:
	$(if $(DESED),,$(error make table-full needs DESED=/path/to/DESED (a real DESED tree); the synthetic study is make demo-sweep))
	@$(MAKE) --no-print-directory install
	$(SEDAUG) prepare-desed --root $(DESED) --out $(DATA)/desed-real
	$(SEDAUG) extract-mels --data $(DATA)/desed-real --out $(DATA)/features-real
	$(SEDAUG) sweep sweeps/table1.yaml --out $(RUNS)/table1 --set data.features=$(abspath $(DATA))/features-real \
	  --set optim.epochs=$(FULL_EPOCHS) $(SWEEP_SET) $(if $(wildcard $(RUNS)/table1/sweep.yaml),--resume)
	$(SEDAUG) table $(RUNS)/table1/final --metrics macro,psds_ct,psds1,psds2

# The protocol end to end on the small synthetic DESED in minutes (sweeps/demo.yaml: two rows, a tiny CRNN); resumes.
demo-sweep: data
	$(SEDAUG) sweep sweeps/demo.yaml --out $(RUNS)/demo-sweep --set data.features=$(abspath $(DATA))/features \
	  $(if $(wildcard $(RUNS)/demo-sweep/sweep.yaml),--resume)
	$(SEDAUG) table $(RUNS)/demo-sweep/final

bench: $(STAMP)
	$(PY) -m benchmarks

# On a GPU machine: the CUDA tests, trials per GPU and the fastest correct step in one report under 9 minutes
# (docs/speed.md); benchmarks/gpu_check.sh --dry-run runs it on a CPU with tiny sizes.
.PHONY: gpu-check gpu-wheels
gpu-check: $(STAMP)
	PYTHON=$(PY) benchmarks/gpu_check.sh

# The wheels a lent GPU machine (no registry there) needs for benchmarks/gpu_device.sh (docs/speed.md).
PYTHON312 ?= python3.12
gpu-wheels: $(STAMP)
	$(PY) -m benchmarks.gpu_wheels --python $(PYTHON312)

clean:
	rm -rf $(RUNS)/demo
