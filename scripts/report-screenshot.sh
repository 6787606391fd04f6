#!/usr/bin/env bash
# Renders a run report to a PNG with headless Chromium (Debian's `chromium` package, installed
# when missing), so the page can be looked at without a browser at hand. With no argument it
# makes a demo report first: the labeling demo on the simulator, 5% of answers failing.
#   scripts/report-screenshot.sh [REPORT.html] [OUT.png]
# Never part of `cargo test` or CI.
set -euo pipefail
cd "$(dirname "$0")/.."
report=${1:-}
png=${2:-docs/report.png}
if [ -z "$report" ]; then
  cargo build --quiet --bin bulkprompt
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  target/debug/bulkprompt run -c jobs/label-reviews.toml --endpoint mock --mock-latency-ms 40 \
    --mock-fail-rate 0.15 --max-attempts 2 --retry-base-ms 50 --circuit-breaker 0 --rpm 3000 --concurrency 8 \
    -o "$tmp/labels.parquet" --quiet --report || true   # exit 2: some jobs failed, on purpose
  report="$tmp/labels.parquet.report.html"
fi
if ! command -v chromium >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null
fi
profile=$(mktemp -d)
# The flags keep Chromium off the network (this machine has none) and out of the user's profile.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --force-device-scale-factor=1 \
  --window-size=880,3000 --screenshot="$png" "file://$(realpath "$report")" 2>/dev/null
rm -rf "$profile"
echo "$png"
