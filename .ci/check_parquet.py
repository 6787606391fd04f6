"""Reads a Parquet output with pyarrow, an independent reader data teams use, and checks it
against the run's JSONL journal: same rows, real column types, the same total cost."""
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq

parquet_path, journal_path = sys.argv[1], sys.argv[2]
table = pq.read_table(parquet_path)
with open(journal_path, encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]

failures = []


def check(name, ok, detail=""):
    print(f"{'ok' if ok else 'FAILED'}: {name} {detail}")
    if not ok:
        failures.append(name)


check("row count", table.num_rows == len(records) == len({r["id"] for r in records}), f"({table.num_rows} rows, {len(records)} records)")
expected = {
    "id": pa.string(),
    "index": pa.int64(),
    "content": pa.string(),
    "prompt_tokens": pa.int64(),
    "completion_tokens": pa.int64(),
    "cost_usd": pa.float64(),
    "latency_ms": pa.int64(),
    "error_http_status": pa.int32(),
    "started_at": pa.timestamp("ms", tz="UTC"),
    "finished_at": pa.timestamp("ms", tz="UTC"),
}
for name, typ in expected.items():
    got = table.schema.field(name).type
    check(f"type of {name}", got == typ, f"({got})")
cost_pq = sum(v for v in table.column("cost_usd").to_pylist() if v is not None)
cost_json = sum(r["cost_usd"] for r in records if r["cost_usd"] is not None)
check("sum of cost_usd", abs(cost_pq - cost_json) < 1e-12, f"({cost_pq:.9f} vs {cost_json:.9f})")
ids_pq = sorted(table.column("id").to_pylist())
check("ids", ids_pq == sorted(r["id"] for r in records))
# A labeling run: typed parsed_<property> columns holding the validated labels.
if "parsed_rating" in table.schema.names:
    for name, typ in {"parsed": pa.string(), "parsed_sentiment": pa.string(), "parsed_rating": pa.int64(), "parsed_reason": pa.string()}.items():
        got = table.schema.field(name).type
        check(f"type of {name}", got == typ, f"({got})")
    by_id = {r["id"]: r for r in records}
    rows = table.select(["id", "parsed_sentiment", "parsed_rating"]).to_pylist()
    same = all(
        (by_id[row["id"]]["parsed"] or {}).get("sentiment") == row["parsed_sentiment"]
        and (by_id[row["id"]]["parsed"] or {}).get("rating") == row["parsed_rating"]
        for row in rows
    )
    check("labels match the journal's parsed values", same)
    check("labels present", sum(1 for row in rows if row["parsed_sentiment"]) > 0)
sys.exit(1 if failures else 0)
