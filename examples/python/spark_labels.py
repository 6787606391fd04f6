"""A sketch: label a Spark DataFrame with `mapInPandas`, every executor sharing one key's rate
limit and budget through the coordinator. Not run here (no Spark on this machine); the same
shape as `ray_labels.py`, which is.

Each partition is one bulkprompt output (its name is the worker's name in the shared budget), so
a task Spark retries resumes its own output and buys nothing twice. Give the partitions a stable
assignment (repartition by a hash of the id) so a retried task sees the same rows.
"""

import pandas as pd
from pyspark.sql import SparkSession, functions as F

import bulkprompt

REDIS = "redis://redis.internal:6379/0"  # the password, if any, in BULKPROMPT_COORDINATOR instead
SHARDS = 64

spark = SparkSession.builder.getOrCreate()
reviews = spark.read.csv("s3://bucket/reviews.csv", header=True)
reviews = reviews.withColumn("id", F.col("review_id")).repartition(SHARDS, F.crc32("id") % SHARDS)


def label(batches):
    from pyspark import TaskContext

    shard = TaskContext.get().partitionId()
    # One job file a partition: the output answers exactly these rows, whatever the batches.
    pdf = pd.concat(list(batches), ignore_index=True)
    if len(pdf):
        table = bulkprompt.run(
            pdf,
            output=f"/mnt/labels/labels-{shard}-of-{SHARDS}.parquet",
            template="Label this review: {review}",
            model="google/gemini-2.5-flash",
            provider="openrouter",
            json_schema="/mnt/jobs/review-labels.schema.json",
            coordinator=REDIS,
            run_name="spark-labels",
            rpm=6000,
            max_cost=50,
            quiet=True,
        )
        yield table.select(["id", "status", "parsed_sentiment", "cost_usd"]).to_pandas()


schema = "id string, status string, parsed_sentiment string, cost_usd double"
reviews.mapInPandas(label, schema).write.parquet("s3://bucket/labels/")
