# prism4m front door: `make demo`, `make test`, `make bench`. Each sets up .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prism4m-installed
DEMO_DIR ?= demo-out

.PHONY: setup demo test bench bench-quick gpu-check browser clean-demo

# Exact pins from requirements-lock.txt (torch 2.14.1 / torchvision 0.29.1 come from the local
# wheel cache here), then the package itself without letting pip re-resolve anything, then
# human_poses' real weights: two .tflite files out of mediapipe's wheel (sha256 pinned; no-op once there).
$(STAMP): requirements-lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-lock.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import prism4m, torch, torchvision, ray, webdataset, segment_anything, open_clip, transformers, ai_edge_litert"
	$(PY) -m prism4m.labelers.fetch_pose_models
	@touch $(STAMP)

setup: $(STAMP)

# Headless Chromium for the report's browser test (Debian's package; root on these machines).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; browser tests will be skipped"; }

demo: setup
	@rm -rf $(DEMO_DIR)
	$(PY) -m prism4m.demo $(DEMO_DIR)/corpus
	$(VENV)/bin/prism4m run jobs/demo.yaml
	$(VENV)/bin/prism4m train jobs/train-tiny.yaml
	$(VENV)/bin/prism4m report $(DEMO_DIR)/dataset -o $(DEMO_DIR)/report -n 8 -t $(DEMO_DIR)/tokenizers/rgb -t $(DEMO_DIR)/tokenizers/canny_edge

# pytest exits 5 when it collects no test: that is not a failure of the suite.
test: setup browser
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

bench: setup
	$(PY) benchmarks/run_all.py --out benchmarks/results/latest.json

# A few minutes instead of ~30: every bench at a tenth of its size, into a separate file.
bench-quick: setup
	$(PY) benchmarks/run_all.py --quick --out benchmarks/results/quick.json

# On a machine with a CUDA device: the label and tokenize stages on the GPU, measured (exits 0 without one).
gpu-check: setup
	$(PY) benchmarks/gpu_check.py

clean-demo:
	rm -rf $(DEMO_DIR)
