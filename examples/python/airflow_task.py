"""An Airflow task that labels the day's export with the Python API (a BashOperator works as
well: docs/scheduling.md). Airflow's retries resume the same day's output; the cap is not worth
retrying, so it skips the task."""

from datetime import datetime, timedelta

from airflow import DAG
from airflow.exceptions import AirflowSkipException
from airflow.operators.python import PythonOperator

import bulkprompt


def label(ds, **_):
    try:
        table = bulkprompt.run(
            f"/srv/labels/exports/reviews-{ds}.csv",
            output=f"/srv/labels/out/labels-{ds}.parquet",
            template="Label this review: {review}",
            model="google/gemini-2.5-flash",
            provider="openrouter",
            json_schema="/srv/labels/jobs/review-labels.schema.json",
            id_column="review_id",
            max_cost=20,
        )
    except bulkprompt.BudgetReached as e:
        raise AirflowSkipException(f"cost cap: {e.summary['total_cost_usd']}") from e
    return {"rows": table.num_rows, "cost_usd": sum(c or 0 for c in table.column("cost_usd").to_pylist())}


with DAG(
    "label_reviews_python",
    start_date=datetime(2026, 12, 1),
    schedule="0 2 * * *",
    catchup=False,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=20)},
) as dag:
    PythonOperator(task_id="label", python_callable=label)
