#!/usr/bin/env bash
# Reruns the model test suites under every OpenBLAS kernel this CPU can execute, and once with
# the wheel's reference BLAS, as stand-ins for other machines; then prints, for every compared
# quantity, the worst value seen under each and the bound the tests hold it to
# (scripts/spread_table.py). docs/testing.md explains how the bounds were set from this table.
#
#   scripts/blas-matrix.sh            # parity + conformance + cache suites (the spread)
#   scripts/blas-matrix.sh --all      # the whole `make test` suite under each (slower)
#   KERNELS="Haswell Zen" scripts/blas-matrix.sh   # a chosen subset; "reference" = the wheel's BLAS
#   scripts/blas-matrix.sh -- --report-time         # arguments after `--` go to the test binaries
#                                                   # (--report-time needs RUSTC_BOOTSTRAP=1 -Z unstable-options)
#
# Needs `make setup` and `make models` (the real models) first. Each run's measurements land
# in target/blas-matrix/<kernel>.jsonl and its log in target/blas-matrix/<kernel>.log.
set -uo pipefail
cd "$(dirname "$0")/.."

suites=(--test parity --test arch_conformance --test joined_projections --test kv_cache_models --test gguf_model --test prompt_cache)
scope=(-p mlx-engine "${suites[@]}")
if [ "${1:-}" = "--all" ]; then scope=(--workspace); shift; fi
test_args=()
if [ "${1:-}" = "--" ]; then shift; test_args=("$@"); fi

flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { for f in "$@"; do [[ " $flags " == *" $f "* ]] || return 1; done; }
# OpenBLAS's x86-64 kernels and the instructions each needs. Forcing one the CPU lacks makes
# OpenBLAS execute illegal instructions, so only runnable ones are offered.
runnable=()
has pni && runnable+=(Prescott)  # cpuinfo calls SSE3 "pni"
has sse4_2 && runnable+=(Nehalem)
has avx && runnable+=(Sandybridge)
has avx2 fma && runnable+=(Haswell Zen)
has avx512f avx512dq avx512bw avx512vl && runnable+=(SkylakeX)
has avx512f avx512dq avx512bw avx512vl avx512_bf16 && runnable+=(Cooperlake)
read -r -a kernels <<< "${KERNELS:-${runnable[*]} reference}"

out=target/blas-matrix
mkdir -p "$out"
corename() {
  OPENBLAS_CORETYPE=$1 python3 -c "import ctypes; l = ctypes.CDLL('libopenblas.so.0'); \
f = l.openblas_get_corename; f.restype = ctypes.c_char_p; print(f().decode())" 2>/dev/null
}

status=0
for k in "${kernels[@]}"; do
  rm -f "$out/$k.jsonl"
  if [ "$k" = reference ]; then
    # A separate build that leaves OpenBLAS unlinked, so MLX calls the wheel's bundled BLAS.
    env=(MLX_ENGINE_NO_OPENBLAS=1 CARGO_TARGET_DIR=target/no-openblas)
    env "${env[@]}" cargo build -q --workspace || exit 1
    echo "== reference BLAS (MLX_ENGINE_NO_OPENBLAS=1)"
  else
    got=$(corename "$k")
    if [ "$got" != "$k" ]; then
      echo "== $k: OpenBLAS runs it as '${got:-?}' on this CPU; skipped" >&2
      continue
    fi
    env=(OPENBLAS_CORETYPE="$k")
    cargo build -q --workspace || exit 1
    echo "== OPENBLAS_CORETYPE=$k"
  fi
  start=$SECONDS
  if env "${env[@]}" MLX_ENGINE_REQUIRE_MODELS=1 MLX_ENGINE_SPREAD_LOG="$PWD/$out/$k.jsonl" \
      cargo test -q "${scope[@]}" --no-fail-fast -- "${test_args[@]}" > "$out/$k.log" 2>&1; then
    echo "   passed in $((SECONDS - start)) s"
  else
    status=1
    echo "   FAILED in $((SECONDS - start)) s; see $out/$k.log:"
    grep -E "panicked at|^    [a-z_0-9]+$" "$out/$k.log" | head -20 | sed 's/^/     /'
  fi
done

python3 scripts/spread_table.py "${kernels[@]/#/$out/}"
exit $status
