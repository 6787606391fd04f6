#!/usr/bin/env bash
# Runs each fuzz target for a minute (FUZZ_SECONDS to change it). Needs a nightly toolchain and
# cargo-fuzz (installed here if missing). Not part of CI: findings land in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
seconds="${FUZZ_SECONDS:-60}"
for target in jsonl_line csv_template response; do
  echo "== fuzzing $target for ${seconds}s"
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=65536
done
