"""A notebook's labeling step: a DataFrame in, typed labels joined back.

    pip install bulkprompt pandas          # the wheel: the binary and this API
    python examples/python/notebook.py     # offline on the simulator; give a provider for real

Re-running the cell resumes: what is answered is not bought again.
"""

import pandas as pd

import bulkprompt

reviews = pd.read_csv("jobs/reviews.csv").rename(columns={"review_id": "id"})

print(bulkprompt.estimate(reviews, template="Label this review: {review}", model="google/gemini-2.5-flash")["cost_worst_usd"])

labels = bulkprompt.run(
    reviews,
    output="out/notebook-labels.parquet",
    template="Label this review: {review}",
    model="google/gemini-2.5-flash",
    endpoint="mock",  # or provider="openrouter" with OPENROUTER_API_KEY set
    json_schema="jobs/review-labels.schema.json",
    max_cost=2,
    dedupe=True,
)
joined = reviews.merge(
    labels.select(["id", "parsed_sentiment", "parsed_rating", "cost_usd"]).to_pandas(), on="id"
)
print(joined.groupby("parsed_sentiment").size())
print(f"cost: ${joined.cost_usd.sum():.6f}")
