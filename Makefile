# Two commands on a fresh machine: `make demo` and `make test`. Both stand on `make setup`
# (idempotent: apt packages, .venv/ with pinned wheels).
CARGO ?= cargo
FIXTURE_DIR := target/plugin-fixture/demo
FIXTURE_PLUGINS := $(FIXTURE_DIR)/release
DEMO_MODEL := $(or $(MLX_ENGINE_MODELS),models)/tiny-random
ENGINE := target/release/mlx-engine

.PHONY: setup build build-debug fixture-plugin demo test bench clean

setup:
	@scripts/setup.sh

# Release build of the engine, the CLI and every workspace plugin (target/release/lib<arch>.so).
build: setup
	$(CARGO) build --release --workspace

build-debug: setup
	$(CARGO) build --workspace

# The out-of-tree example plugin (depends only on plugin-api), until real architectures land.
fixture-plugin: setup
	$(CARGO) build --release --manifest-path tests/plugin-fixture/Cargo.toml --target-dir $(FIXTURE_DIR)

# Smoke job: list every plugin (each is loaded and checked), write a small random-weight model
# for the fixture architecture, and run a real forward pass + greedy decode through the plugin.
demo: build fixture-plugin
	$(ENGINE) plugins --plugins $(FIXTURE_PLUGINS)
	.venv/bin/python scripts/make_tiny_model.py $(DEMO_MODEL)
	$(ENGINE) forward --plugins $(FIXTURE_PLUGINS) --model $(DEMO_MODEL) --tokens 1,2,3,4,5 --decode 8

# All tests on the CPU backend. Plugins are built first so the engine finds them in its build
# folder (target/debug/).
test: build-debug
	$(CARGO) test --workspace

# f32 GEMM throughput with OpenBLAS linked vs the wheel's reference BLAS.
bench: setup
	$(CARGO) run --release -p mlx-engine --example gemm_bench
	MLX_ENGINE_NO_OPENBLAS=1 $(CARGO) run --release -p mlx-engine --example gemm_bench --target-dir target/no-openblas

clean:
	$(CARGO) clean
