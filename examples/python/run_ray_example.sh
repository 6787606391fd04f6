#!/usr/bin/env bash
# Runs examples/python/ray_labels.py on this machine: a Redis (Debian's redis-server) and the
# simulator enforcing a rate limit, both on 127.0.0.1 at free ports, 2 local Ray workers, then
# the same command again (it resumes: nothing bought twice). Needs `pip install bulkprompt
# "ray[data]"` (or BULKPROMPT_BIN and PYTHONPATH=python from a checkout).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rport=$(port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
bin=${BULKPROMPT_BIN:-bulkprompt}
"$bin" serve-mock --port 0 --latency-ms 200 --rpm 3000 > "$work/mock.log" 2>&1 &
for _ in $(seq 50); do grep -q "listening on" "$work/mock.log" && break; sleep 0.1; done
url=$(sed -n 's/.*listening on //p' "$work/mock.log")
python="${PYTHON:-python3}"
for round in 1 2; do
  echo "== round $round"
  "$python" examples/python/ray_labels.py --redis "redis://127.0.0.1:$rport" --endpoint "$url" \
    --shards 8 --rpm 3000 --max-cost 1 --out "$work/out" --workers 2
  curl -s "${url%/v1}/mock/stats" | "$python" -c 'import json,sys; s=json.load(sys.stdin); print("simulator: requests", s["requests"], "429s", s.get("rate_limited"))'
done
