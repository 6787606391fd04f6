"""Label a dataset with Ray Data, many workers sharing one key's rate limit and budget.

Each group of rows (a shard, by a hash of the id) is labelled by `bulkprompt.run` in a Ray
task; every task joins the same coordinator run (`coordinator=`, `run_name=`), so the workers
together never pass `rpm` or `max_cost`, however many there are. Each shard writes its own
output (its name is the worker's name in the shared budget), so a task Ray retries resumes its
own output and buys nothing twice.

    pip install bulkprompt "ray[data]"
    python examples/python/ray_labels.py --redis redis://127.0.0.1:6379 \
        --endpoint http://127.0.0.1:8080/v1 --shards 8       # examples/python/run_ray_example.sh

Without --endpoint it runs on the in-process simulator of each task (`mock`).
"""

import argparse
import os
import time
import zlib

import pyarrow as pa
import ray

import bulkprompt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", required=True, help="the coordinator, redis://HOST:PORT")
    ap.add_argument("--endpoint", default="mock")
    ap.add_argument("--input", default="jobs/reviews.csv")
    ap.add_argument("--out", default="out/ray")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--rpm", type=int, default=6000, help="the key's limit, shared by every worker")
    ap.add_argument("--max-cost", type=float, default=1.0, help="one budget for every worker")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    out_dir = os.path.abspath(args.out)

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    rows = ray.data.read_csv(os.path.abspath(args.input))
    shards = args.shards
    # A stable shard a row: the same row goes to the same output on every run.
    rows = rows.map(lambda r: {**r, "id": r["review_id"], "shard": zlib.crc32(r["review_id"].encode()) % shards})

    def label(group: pa.Table) -> pa.Table:
        shard = group.column("shard")[0].as_py()
        table = bulkprompt.run(
            group.drop(["shard"]),
            output=f"{out_dir}/labels-{shard}-of-{shards}.parquet",
            template="Label this review: {review}",
            model="google/gemini-2.5-flash",
            endpoint=args.endpoint,
            json_schema=os.path.abspath("jobs/review-labels.schema.json"),
            coordinator=args.redis,
            run_name="ray-labels",
            rpm=args.rpm,
            max_cost=args.max_cost,
            quiet=True,
        )
        return table.select(["id", "status", "parsed_sentiment", "cost_usd"])

    started = time.monotonic()
    labelled = rows.groupby("shard").map_groups(label, batch_format="pyarrow").to_arrow_refs()
    result = pa.concat_tables(ray.get(labelled))
    secs = time.monotonic() - started
    ids = result.column("id").to_pylist()
    ok = sum(1 for s in result.column("status").to_pylist() if s == "ok")
    cost = sum(c or 0 for c in result.column("cost_usd").to_pylist())
    print(f"{len(ids)} records, {len(set(ids))} ids, {ok} ok, ${cost:.6f}, {secs:.1f} s, {len(ids) / secs:.1f} jobs/s")
    assert len(ids) == len(set(ids)), "every id once"


if __name__ == "__main__":
    main()
