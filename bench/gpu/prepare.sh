#!/usr/bin/env bash
# Here (the build machine): everything the GPU machine cannot download, packed into one archive
# and split into parts that fit the device tool's 64 MiB per call (.gpu/c0, .gpu/c1, ...; git
# ignores .gpu/). bench/gpu/README.md says how the parts travel and what runs there.
set -euo pipefail
cd "$(dirname "$0")/../.."
PART=${PART:-56M}
MLX_VERSION=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("mlx"))')
MLX_LM_VERSION=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("mlx-lm"))')
grep -qsx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
make build
cargo build --release -p mlx-engine --example kernels_per_step
rm -rf .gpu && mkdir -p .gpu/stage/bin .gpu/stage/lib .gpu/stage/whl .gpu/stage/tokenizer
cp target/release/mlx-engine target/release/lib*.so target/release/examples/kernels_per_step .gpu/stage/bin/
strip .gpu/stage/bin/*
# The CPU build links Debian's OpenBLAS, which the GPU machine lacks.
for l in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do cp -L "/lib/x86_64-linux-gnu/$l" .gpu/stage/lib/; done
# The GPU machine runs Python 3.12; the CUDA build of MLX's library, its Python bindings, mlx-lm.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    -d .gpu/stage/whl "mlx-cuda-13==$MLX_VERSION" "mlx==$MLX_VERSION" "mlx-lm==$MLX_LM_VERSION"
# The random-weight models made there use SmolLM2's tokenizer. The real model itself (4 more
# parts) is for the speculative-decoding runs and the SmolLM2 row; REAL_MODEL=0 leaves it out.
SMOL=models/smollm2-135m-instruct/bf16
cp "$SMOL"/tokenizer.json "$SMOL"/tokenizer_config.json "$SMOL"/special_tokens_map.json .gpu/stage/tokenizer/
if [ "${REAL_MODEL:-1}" != 0 ]; then
    mkdir -p .gpu/stage/smollm2-bf16 && cp "$SMOL"/* .gpu/stage/smollm2-bf16/
fi
tar -C .gpu/stage -cf - . | gzip -1 | split -b "$PART" -d -a 1 - .gpu/payload.
n=0
for p in .gpu/payload.*; do
    mkdir -p ".gpu/c$n" && mv "$p" ".gpu/c$n/"
    n=$((n + 1))
done
rm -rf .gpu/stage
echo "$n parts: $(du -sh .gpu | cut -f1) in .gpu/c0 .. .gpu/c$((n - 1))"
