#!/usr/bin/env bash
# The benchmark suite, from a fresh checkout: builds in release mode, installs wrk (the
# reference client for scenario 1) and redis-server (scenario 7's coordinator) when missing,
# runs every scenario and prints the table that BENCHMARKS.md holds. Arguments go to the
# driver: --quick for a smoke run, --only 1,3 to pick.
# Takes about ten minutes; run it on a quiet machine. Never part of `cargo test` or CI.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null 2>&1 \
    || echo "bench: wrk could not be installed; scenario 1 will lack its reference" >&2
fi
if ! command -v redis-server >/dev/null; then
  { apt-get update -qq && apt-get install -y -qq redis-server; } >/dev/null 2>&1 \
    || echo "bench: redis-server could not be installed; scenario 7 will be skipped" >&2
fi
cargo build --release --locked --bin bulkprompt --example bench
exec target/release/examples/bench "$@"
