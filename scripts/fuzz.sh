#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for SECONDS each (default 45), seeded from fuzz/seeds/.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]. A crash stops the run with a non-zero status and
# leaves its input in fuzz/artifacts/TARGET/; copy it to fuzz/regressions/TARGET/ (the tests
# replay every file there) once it is fixed. cargo-fuzz needs nightly features: this machine's
# stable toolchain provides them through RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
# 45 s a target (about 5 minutes for all seven) is the default for a run by hand. CI's smoke run
# passes its own, ${FOUNDRY_FUZZ_SECONDS:-30} from .ci/run, so the seven targets add about
# 3.5 minutes to each CI run; set FOUNDRY_FUZZ_SECONDS there to fuzz longer.
seconds="${1:-45}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz.sh: SECONDS must be a positive whole number, not '$seconds'" >&2
  exit 2
fi
if [ $# -gt 0 ]; then
  shift
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(brick_reader rts_png_reader parts_index task_parser manifest_merge sse_parser elf_analysis)
fi
# Every target starts from its seeds: check them all before the long build, so a misspelt target
# or a missing folder is a clear error rather than a fuzzer started from nothing.
for target in "${targets[@]}"; do
  if [ -z "$(ls -A "fuzz/seeds/$target" 2>/dev/null)" ]; then
    echo "fuzz.sh: fuzz/seeds/$target is missing or empty: no seeds for target '$target'" >&2
    exit 2
  fi
done
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
cargo fuzz build
# A folder without files (no saved crash yet) must copy nothing rather than a literal '*'.
shopt -s nullglob
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  # Add the seeds and saved crashes the corpus lacks; what the fuzzer already found stays.
  for input in fuzz/seeds/"$target"/* fuzz/regressions/"$target"/*; do
    [ -e "$corpus/${input##*/}" ] || cp "$input" "$corpus/"
  done
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
  # sed alone, not grep | sed: under pipefail a log without these lines would fail the run.
  sed -nE "s/^(stat::(number_of_executed_units|new_units_added).*)/  $target \1/p" "$log"
done
