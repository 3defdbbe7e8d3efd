# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Set-up holds this lock (flock, util-linux): `make serve` and `make test` started together on a
# fresh clone install once, one after the other, instead of both writing into one .venv.
LOCK   ?= $(VENV).lock
PORT   ?= 45678
BIND   ?= 127.0.0.1
DATA_DIR ?=
# `make bench` writes here (ignored by git) and keeps the original package's venv in BENCH_CACHE.
BENCH_OUT   ?= benchmarks/out
BENCH_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/faissx-bench

.PHONY: install serve test test-ray lint bench bench-ray bench-peers bench-anchors clean faiss-suite original-suite docker docker-test

# The recipe runs under the lock and checks again inside it: whoever waited finds the stamp
# newer than pyproject.toml and installs nothing.
$(STAMP): pyproject.toml
	@flock $(LOCK) $(MAKE) --no-print-directory _locked-install

.PHONY: _locked-install
_locked-install:
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then exit 0; fi; \
	set -e; \
	echo "setting up $(VENV) (once; takes a minute)"; \
	$(PYTHON) -m venv $(VENV); \
	$(BIN)/pip install --quiet --upgrade pip; \
	$(BIN)/pip install --quiet -e '.[dev]'; \
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/faissx serve --bind-address $(BIND) --port $(PORT) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

# Test files run on TEST_WORKERS processes (pytest-xdist), a file's tests on one worker, so a
# module's shared server starts once. Most of a test's time is a server starting or a client
# waiting on one: two workers keep two cores busy, and on a loaded machine hold two shares of it
# (the suite under 4 busy loops: 8 min against 13 min on one worker). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# The Ray step of CI: installs the `ray` extra and runs the tests that need a Ray cluster
# (tests/test_ray.py starts a two-node one on 127.0.0.1; without Ray those tests skip).
test-ray: $(STAMP)
	flock $(LOCK) $(BIN)/pip install --quiet -e '.[dev,ray]'
	$(BIN)/pytest -q tests/test_ray.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy faissx_core faissx_client faissx_plugins faissx
	$(BIN)/hadolint Dockerfile

# The image: `make docker` builds it; `make docker-test` builds it and runs it and the compose
# file with a real engine (tests/test_docker.py). DOCKER_BASE replaces python:3.11-slim where no
# registry is reachable (a local Debian image with python3; see README.md, "Docker").
DOCKER_BASE ?=
docker:
	docker build $(if $(DOCKER_BASE),--build-arg BASE=$(DOCKER_BASE)) -t faissx:latest .

docker-test: $(STAMP)
	FAISSX_TEST_DOCKER=1 FAISSX_DOCKER_BASE=$(DOCKER_BASE) $(BIN)/pytest -q tests/test_docker.py

bench: $(STAMP)
	flock $(LOCK) $(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks --out $(BENCH_OUT) --cache $(BENCH_CACHE)

# FAISS's own tests, local vs through the remote client (not part of `make test`):
#   make faiss-suite FAISS_SRC=/path/to/faiss   (its source tree at the installed faiss's tag)
faiss-suite: $(STAMP)
	@test -n "$(FAISS_SRC)" || (echo "usage: make faiss-suite FAISS_SRC=/path/to/faiss"; exit 2)
	$(BIN)/python scripts/faiss_suite.py $(FAISS_SRC) $(FAISS_SUITE_ARGS)

# The original FAISSx's own tests and examples against this server (not part of `make test`):
#   make original-suite ORIGINAL_SRC=/path/to/faissx   (its source tree; ORIGINAL_SUITE_ARGS=--failures)
original-suite: $(STAMP)
	@test -n "$(ORIGINAL_SRC)" || (echo "usage: make original-suite ORIGINAL_SRC=/path/to/faissx"; exit 2)
	flock $(LOCK) $(BIN)/pip install --quiet -e '.[dev,original-suite]'
	$(BIN)/python scripts/original_suite.py $(ORIGINAL_SRC) $(ORIGINAL_SUITE_ARGS)

bench-ray: $(STAMP)
	flock $(LOCK) $(BIN)/pip install --quiet -e '.[dev,ray]'
	$(BIN)/python -m benchmarks.ray_bench --out $(BENCH_OUT)

# FAISSx beside Milvus Lite, Chroma, LanceDB, Qdrant (local mode) and pgvector: each installs into
# its own virtualenv under benchmarks/peers/.venvs on first use. PEERS_ARGS=--quick for a smoke run.
bench-peers: $(STAMP)
	flock $(LOCK) $(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.peers --out $(BENCH_OUT)/peers $(PEERS_ARGS)

# Only issue 17's anchors (one-query overhead over a bare echo, one-row adds): a minute or two.
# ANCHORS_ARGS=--quick for a smoke run; --rounds/--reps/--adds to size it. Then where one
# query's time goes (CPU per request on each side against the echo; local faiss hot and after
# an idle gap, and the floor that leaves for the anchor ratio): benchmarks/peers/request_cost.py.
bench-anchors: $(STAMP)
	flock $(LOCK) $(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.peers.anchors --out $(BENCH_OUT)/anchors.json $(ANCHORS_ARGS)
	$(BIN)/python -m benchmarks.peers.request_cost --out $(BENCH_OUT)/request-cost.json

clean:
	rm -rf $(VENV) $(LOCK) build *.egg-info .pytest_cache
