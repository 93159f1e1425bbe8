#!/usr/bin/env bash
# `make fuzz`: runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 60) each, starting
# from the committed seed corpus (fuzz/corpus/<target>, read only; new inputs go to
# fuzz/target/corpus/<target>), and prints the executions per target. Installs what it needs:
# the nightly toolchain (rustup) and cargo-fuzz. See docs/adr/0006-fuzzing.md.
#
#   FUZZ_SECONDS=600 make fuzz            # longer runs
#   FUZZ_TARGETS="registry chat_template" make fuzz
#
# Exit status: 1 if any target crashed (its input is in fuzz/artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
# The config targets write a scratch config.json under TMPDIR; keep it inside the build folder.
export TMPDIR=$PWD/fuzz/target/tmp
mkdir -p "$TMPDIR"
cargo +nightly fuzz build

summary=()
failed=0
for t in $targets; do
  work=fuzz/target/corpus/$t
  log=fuzz/target/logs/$t.log
  mkdir -p "$work" "$(dirname "$log")" "fuzz/corpus/$t"
  echo "fuzz: $t for ${seconds}s"
  # -timeout: a single input running past 10 s is a hang (templates are stopped by their fuel
  # long before); -rss_limit_mb: what one input may allocate before it counts as a crash.
  status=0
  cargo +nightly fuzz run "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  # The final stats when the run ends normally; the last status line when it crashed.
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{print $2}' | tail -n 1)
  [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$log" | tail -n 1 | tr -d '#')
  if [ "$status" -ne 0 ]; then
    failed=1
    summary+=("$t: CRASH after $execs executions (exit $status; see $log and fuzz/artifacts/$t/)")
    tail -n 30 "$log"
  else
    summary+=("$t: $execs executions, no crash")
  fi
done
rm -rf "$TMPDIR"
printf 'fuzz: %s\n' "${summary[@]}"
exit "$failed"
