# The README's commands. Each target sets up what it needs: a fresh clone runs `make demo` or `make test`.
PY ?= python3
# tflite-runtime 2.14 has wheels for Python <= 3.11 only
PY_LEGACY ?= $(shell command -v python3.11 2>/dev/null || echo $(PY))
VENV := .venv
BIN := $(VENV)/bin
LEGACY := .venv-legacy
STAMP := $(VENV)/.installed-stamp
LEGACY_STAMP := $(LEGACY)/.installed-stamp
DEVICE_ENV := .venv-device
DEVICE_STAMP := $(DEVICE_ENV)/.installed-stamp
# The federated device client: the device extra plus Flower (which brings FastAPI/SQLAlchemy for its
# SuperNode, so it is not .venv-device, whose tests assert neither is installed); still no TensorFlow.
DEVICE_FL_ENV := .venv-device-fl
DEVICE_FL_STAMP := $(DEVICE_FL_ENV)/.installed-stamp
DEMO := demo-out

# Keep every cache inside the repository (CI caches nothing outside it).
export PIP_CACHE_DIR := $(CURDIR)/.cache/pip
export KERAS_HOME := $(CURDIR)/.cache/keras
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export TF_CPP_MIN_LOG_LEVEL := 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONDONTWRITEBYTECODE := 1
# Ray: no usage statistics
export RAY_USAGE_STATS_ENABLED := 0
# Flower: no telemetry, no update check, no runtime dependency installation; its home inside the repo
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_HOME := $(CURDIR)/.cache/flwr

.PHONY: install legacy device-env device-fl-env lint demo test bench bundles clean serve

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $@

# A second environment with the legacy tflite-runtime 2.14 (needs numpy<2), for the compat tests.
$(LEGACY_STAMP):
	$(PY_LEGACY) -m venv $(LEGACY)
	$(LEGACY)/bin/python -m pip install -q "numpy>=1.24,<2" "tflite-runtime==2.14.*" "pillow>=10,<12"
	touch $@

# A device-only environment (the `device` extra: numpy, LiteRT, Pillow, rich; no TensorFlow).
$(DEVICE_STAMP): pyproject.toml
	$(PY) -m venv $(DEVICE_ENV)
	$(DEVICE_ENV)/bin/python -m pip install -q -e ".[device]"
	touch $@

install: $(STAMP)

device-env: $(DEVICE_STAMP)

$(DEVICE_FL_STAMP): pyproject.toml
	$(PY) -m venv $(DEVICE_FL_ENV)
	$(DEVICE_FL_ENV)/bin/python -m pip install -q -e ".[device-fl]"
	touch $@

device-fl-env: $(DEVICE_FL_STAMP)

legacy: $(LEGACY_STAMP)

demo: install
	@rm -rf $(DEMO)
	@echo "== 1/7 train a CNN on 5,000 real MNIST digits"
	$(BIN)/edgeloop cloud train --model cnn --data mnist5k --epochs 5 --out $(DEMO)/run
	@echo "== 2/7 export float32, float16, dynamic-range and int8 bundles, each verified against Keras in LiteRT"
	$(BIN)/edgeloop cloud export $(DEMO)/run --all-modes --out $(DEMO)/bundles
	@echo "== 3/7 on the device side (no TensorFlow): classify real MNIST test digits with the new int8 bundle"
	$(BIN)/edgeloop device predict $(DEMO)/bundles/mnist5k-cnn-int8 models/examples/digit-*.png
	@echo "== 4/7 the shipped pretrained bundle, and its latency"
	$(BIN)/edgeloop device predict mnist-cnn-int8 models/examples/digit-7.png --top-k 2
	$(BIN)/edgeloop device bench mnist-cnn-int8 --runs 300
	@echo "== 5/7 simulate FedAvg: 100 clients holding 2 digit classes each, 10 per round"
	$(BIN)/edgeloop federated simulate --model mlp-small --data digits --clients 100 --fraction 0.1 \
	    --local-epochs 5 --batch 10 --rounds 30 --partition shards --seed 0 --out $(DEMO)/fedsim
	@echo "== 6/7 real federated rounds: 1 Flower server + 3 device processes training inside the .tflite (LiteRT)"
	$(BIN)/edgeloop federated deploy-local --clients 3 --rounds 3 --data digits --model mlp-small --out $(DEMO)/fl
	@echo "== 7/7 the fleet: sign and publish the new int8 bundle; a device agent polls, verifies and swaps it in"
	@set -e; svc=$(DEMO)/service; \
	$(BIN)/edgeloop cloud keygen --data-dir $$svc; \
	token=$$($(BIN)/edgeloop cloud add-device demo-device --data-dir $$svc --json | $(BIN)/python -c 'import json, sys; print(json.load(sys.stdin)["token"])'); \
	$(BIN)/edgeloop cloud publish $(DEMO)/bundles/mnist5k-cnn-int8 --run $(DEMO)/run --channel stable --data-dir $$svc; \
	port=$$($(BIN)/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	$(BIN)/edgeloop cloud serve --data-dir $$svc --port $$port --log-level warning & server=$$!; \
	trap 'kill $$server 2>/dev/null || true' EXIT; \
	$(BIN)/edgeloop device run --server http://127.0.0.1:$$port --token $$token --channel stable --dir $(DEMO)/agent \
	    --public-key $$svc/keys/signing.pub --initial mnist-cnn-int8 --duration 6; \
	kill $$server; wait $$server || true; \
	$(BIN)/edgeloop device predict $(DEMO)/agent models/examples/digit-3.png
	@echo "demo done: the run, bundles, export report, federated runs, service data and agent are in $(DEMO)/"

lint: install
	$(BIN)/ruff check .

test: install legacy device-env device-fl-env lint
	$(BIN)/python -m pytest -q

bench: install legacy device-env device-fl-env
	$(BIN)/python benchmarks/device_runtime.py
	nice -n 10 $(BIN)/python benchmarks/federated_sim.py
	$(BIN)/python benchmarks/fleet_load.py
	$(BIN)/python benchmarks/fuzz.py
	nice -n 10 $(BIN)/python benchmarks/federated_deploy.py
	nice -n 10 $(BIN)/python benchmarks/federated_async.py

bundles: install
	$(BIN)/edgeloop cloud ship-bundles

clean:
	rm -rf $(DEMO) runs .pytest_cache .hypothesis

# The heavy Ray checks (not part of `make test`, which runs the Ray smoke test only): a worker killed
# mid-round, resume across engines, the CNN on Ray, the CLI's own 127.0.0.1 instance; then the local vs
# Ray benchmark rows. Each test starts and stops its own tiny Ray cluster.
.PHONY: test-ray bench-ray test-heavy
# Timing-sensitive real-rounds checks kept out of `make test` (a device SIGKILLed mid-training in async mode,
# then the server killed and resumed).
test-heavy: install device-fl-env
	EDGELOOP_HEAVY=1 $(BIN)/python -m pytest -q tests/federated/test_fl_deploy.py -k async_device_killed

test-ray: install
	EDGELOOP_RAY=1 $(BIN)/python -m pytest -q tests/federated/test_ray_engine.py

bench-ray: install
	nice -n 10 $(BIN)/python benchmarks/federated_sim.py --part ray

# The fleet at scale (not part of `make test`, which runs fleet_load's smoke tests): 1,000 devices in a closed
# loop against commit 13f8992's server, then 1 against 2 PostgreSQL workers with the same upload work (uploads
# every 4 s). About 8 minutes; the figures mean something only on an otherwise quiet machine.
.PHONY: bench-fleet
bench-fleet: install
	$(BIN)/python benchmarks/fleet_load.py --devices 1000 --upload-share 0.1 --think 0.2 --duration 30 \
		--baseline 13f8992 --backends sqlite:1,postgresql:1,postgresql:2 --out benchmarks/results/fleet_load_1000.json
	$(BIN)/python benchmarks/fleet_load.py --devices 1000 --upload-share 0.1 --think 0.1 --upload-every 4 \
		--duration 30 --backends postgresql:1,postgresql:2 --out benchmarks/results/fleet_load_1000_paced_think01.json

# TensorFlow Federated parity (not part of `make test`). TFF 0.87 pins TensorFlow 2.14 and Python < 3.12,
# so it gets its own .venv-tff, installed exactly from a hashed lock file.
PY_TFF ?= $(PY_LEGACY)
TFF_ENV ?= .venv-tff
TFF_LOCK := federated/parity/requirements-tff.lock
TFF_STAMP := $(TFF_ENV)/.installed-stamp

$(TFF_STAMP): $(TFF_LOCK)
	rm -rf $(TFF_ENV)
	$(PY_TFF) -m venv $(TFF_ENV)
	$(TFF_ENV)/bin/python -m pip install -q --no-deps --require-hashes -r $(TFF_LOCK)
	touch $@

.PHONY: tff-env tff-parity
tff-env: $(TFF_STAMP)

tff-parity: install tff-env
	EDGELOOP_TFF=1 EDGELOOP_TFF_VENV=$(TFF_ENV) $(BIN)/python -m pytest -q -m tff tests/federated/test_parity.py
	nice -n 10 $(BIN)/python benchmarks/tff_parity.py --tff-venv $(TFF_ENV)

# The fleet service on 127.0.0.1:8000 with its data in service-data/ (keys, SQLite, published bundles).
serve: install
	@test -f service-data/keys/signing.key || $(BIN)/edgeloop cloud keygen --data-dir service-data
	$(BIN)/edgeloop cloud serve --data-dir service-data

# The device side on emulated Raspberry Pi OS userlands (not part of `make test`; needs root, ~30-60 min
# the first time): Debian 12 arm64 with `pip install .[device]`, and armhf with tflite-runtime 2.14.
# Roots are cached in .cache/pi-check; logs and outputs go to benchmarks/results/pi_check/.
.PHONY: pi-check
pi-check:
	@command -v debootstrap >/dev/null && command -v qemu-aarch64-static >/dev/null || \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap binfmt-support)
	mkdir -p benchmarks/results/pi_check
	bash -o pipefail -c 'nice -n 10 timeout 7200 bash tests/arm/pi-check.sh arm64 armhf 2>&1 | tee benchmarks/results/pi_check/pi-check.log'
