#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time: FUZZ_SECONDS per target (default 60), all
# targets or the ones named as arguments. Needs a nightly toolchain and cargo-fuzz
# (`cargo install --locked cargo-fuzz`); without them it says so and exits 2.
#
# The working corpus grows in fuzz/corpus/<target> (not committed); fuzz/seeds/<target> holds the
# committed starting inputs. A crash leaves its input in fuzz/artifacts/<target>/ and stops the
# run with a non-zero status; commit it under fuzz/regressions/<target>/ once fixed, where
# `run.sh --regressions` replays every committed input (and each seed) through its target.
set -euo pipefail
cd "$(dirname "$0")"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: needs cargo-fuzz (cargo install --locked cargo-fuzz)" >&2
  exit 2
fi

seconds="${FUZZ_SECONDS:-60}"
replay=false
if [ "${1:-}" = "--regressions" ]; then
  replay=true
  shift
fi
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build -O

for target in "${targets[@]}"; do
  inputs=()
  for dir in "seeds/$target" "regressions/$target"; do
    if [ -d "$dir" ]; then inputs+=("$dir"); fi
  done
  if $replay; then
    # Each committed input once, no mutation: a regression check, not a search.
    files=()
    for dir in "${inputs[@]}"; do
      while IFS= read -r -d '' f; do files+=("$f"); done < <(find "$dir" -type f -print0)
    done
    echo "== $target: replaying ${#files[@]} committed inputs"
    if [ "${#files[@]}" -gt 0 ]; then
      cargo +nightly fuzz run -O "$target" "${files[@]}" -- -runs=0 2>&1 | tail -n 2
    fi
    continue
  fi
  mkdir -p "corpus/$target"
  echo "== $target: ${seconds}s"
  set +e
  cargo +nightly fuzz run -O "$target" "corpus/$target" "${inputs[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"/tmp/gatehouse-fuzz-$target.log" 2>&1
  status=$?
  set -e
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|==[0-9]+==ERROR)' \
    "/tmp/gatehouse-fuzz-$target.log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "/tmp/gatehouse-fuzz-$target.log" >&2
    echo "== $target failed (status $status); crash inputs, if any, in fuzz/artifacts/$target" >&2
    exit 1
  fi
done
