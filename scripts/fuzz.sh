#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for SECONDS each (default 45), seeded from fuzz/seeds/.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]. A crash stops the run with a non-zero status and
# leaves its input in fuzz/artifacts/TARGET/; copy it to fuzz/regressions/TARGET/ (the tests
# replay every file there) once it is fixed. cargo-fuzz needs nightly features: this machine's
# stable toolchain provides them through RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-45}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(brick_reader rts_png_reader parts_index task_parser manifest_merge sse_parser elf_analysis)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
cargo fuzz build
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  cp -n fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  cp -n fuzz/regressions/"$target"/* "$corpus"/ 2>/dev/null || true
  log="fuzz/logs/$target.log"
  mkdir -p fuzz/logs
  echo "fuzzing $target for ${seconds}s"
  # -rss_limit_mb: an input that makes a reader allocate gigabytes is a bug, not a test setting.
  if ! cargo fuzz run "$target" "$corpus" -- \
      -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=20 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz target $target failed; its input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "stat::number_of_executed_units|stat::new_units_added" "$log" |
    sed "s/^/  $target /"
done
