"""The Python API against the project's own simulator (`bulkprompt serve-mock`, a free port)."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest

import bulkprompt

ROOT = Path(__file__).resolve().parents[2]
ROWS = [{"id": f"r{i}", "text": f"review number {i}: it arrived on time"} for i in range(20)]
FLAGS = dict(template="Label this review: {text}", model="gpt-4o-mini", rpm=1000000)


@pytest.fixture(scope="module")
def mock():
    proc = subprocess.Popen(
        [bulkprompt.binary(), "serve-mock", "--port", "0", "--latency-ms", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline()
    url = line.split("listening on ")[1].strip()
    yield url
    proc.terminate()
    proc.wait()


def requests(url):
    base = url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(base + "/mock/stats") as r:
        return json.load(r)["requests"]


def test_list_pandas_and_pyarrow_inputs_give_the_same_table(mock, tmp_path):
    pd = pytest.importorskip("pandas")
    inputs = {
        "list": ROWS,
        "arrow": pa.Table.from_pylist(ROWS),
        "pandas": pd.DataFrame(ROWS),
    }
    tables = {
        name: bulkprompt.run(data, output=tmp_path / f"{name}.parquet", endpoint=mock, **FLAGS)
        for name, data in inputs.items()
    }
    first = tables["list"]
    assert first.num_rows == 20
    assert first.column("id").to_pylist() == [r["id"] for r in ROWS], "the input's order"
    assert set(first.column("status").to_pylist()) == {"ok"}
    for name, t in tables.items():
        for col in ("id", "status", "content"):
            assert t.column(col).to_pylist() == first.column(col).to_pylist(), (name, col)
    assert all(c > 0 for c in first.column("cost_usd").to_pylist())


def test_calling_again_resumes_and_sends_nothing(mock, tmp_path):
    out = tmp_path / "labels.jsonl"
    t = bulkprompt.run(ROWS, output=out, endpoint=mock, **FLAGS)
    assert t.num_rows == 20
    before = requests(mock)
    again = bulkprompt.run(ROWS, output=out, endpoint=mock, **FLAGS)
    assert requests(mock) == before, "nothing sent twice"
    assert again.column("content").to_pylist() == t.column("content").to_pylist()


def test_a_bad_template_raises_and_sends_nothing(mock, tmp_path):
    before = requests(mock)
    with pytest.raises(bulkprompt.RunError) as e:
        bulkprompt.run(
            ROWS,
            output=tmp_path / "bad.parquet",
            endpoint=mock,
            template="Label: {no_such_column}",
            model="gpt-4o-mini",
        )
    assert e.value.exit_code == 1
    assert "no_such_column" in e.value.message
    assert requests(mock) == before


def test_the_cap_raises_budget_reached_with_what_was_bought(mock, tmp_path):
    rows = [{"id": f"c{i}", "text": f"word {i} " * 50} for i in range(200)]
    with pytest.raises(bulkprompt.BudgetReached) as e:
        bulkprompt.run(rows, output=tmp_path / "capped.parquet", endpoint=mock, max_cost=0.0005,
                       max_tokens=50, **FLAGS)
    assert e.value.exit_code == 3
    assert e.value.summary["outcome"] == "budget"
    assert e.value.summary["total_cost_usd"] <= 0.0005
    assert e.value.table is not None and 0 < e.value.table.num_rows < 200


def test_a_schema_gives_typed_columns(mock, tmp_path):
    t = bulkprompt.run(
        ROWS,
        output=tmp_path / "typed.parquet",
        endpoint=mock,
        json_schema=ROOT / "jobs" / "review-labels.schema.json",
        **FLAGS,
    )
    assert t.schema.field("parsed_sentiment").type == pa.string()
    assert t.schema.field("parsed_rating").type == pa.int64()
    assert all(v is not None for v in t.column("parsed_sentiment").to_pylist())


def test_estimate_and_status(mock, tmp_path):
    e = bulkprompt.estimate(ROWS, **{k: v for k, v in FLAGS.items() if k != "rpm"})
    assert e["jobs"] == 20 and e["cost_worst_usd"] > 0
    out = tmp_path / "s.parquet"
    bulkprompt.run(ROWS, output=out, endpoint=mock, **FLAGS)
    s = bulkprompt.status(out)
    assert s["ok"] == 20


def test_the_command_line_is_installed_too():
    for cmd in ([bulkprompt.binary(), "--version"], [sys.executable, "-m", "bulkprompt", "--version"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert out.startswith("bulkprompt ")


def test_a_tqdm_compatible_bar_is_fed_to_the_end(mock, tmp_path):
    class Bar:
        def __init__(self):
            self.n, self.total = 0, None

        def update(self, k):
            self.n += k

    bar = Bar()
    bulkprompt.run(ROWS, output=tmp_path / "bar.parquet", endpoint=mock, progress=bar, **FLAGS)
    assert bar.n == 20
    lines = []
    bulkprompt.run(ROWS, output=tmp_path / "lines.parquet", endpoint=mock, progress=lines.append, **FLAGS)
    assert any("done" in l for l in lines), lines


def test_ctrl_c_stops_the_run_as_sigint_does_and_it_resumes(tmp_path):
    import os
    import signal
    import threading

    slow = subprocess.Popen(
        [bulkprompt.binary(), "serve-mock", "--port", "0", "--latency-ms", "300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = slow.stdout.readline().split("listening on ")[1].strip()
        rows = [{"id": f"k{i}", "text": f"review {i}"} for i in range(60)]
        out = tmp_path / "stopped.parquet"
        # Started in the background by a script, Python inherits SIGINT ignored: Ctrl-C as a
        # terminal delivers it is the default handler.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            with pytest.raises(KeyboardInterrupt):
                bulkprompt.run(rows, output=out, endpoint=url, concurrency=2, grace=5, **FLAGS)
        finally:
            signal.signal(signal.SIGINT, previous)
        stopped_at = requests(url)
        assert stopped_at < 60, "stopped part way"
        # The same call again resumes: every id ok, what was answered not bought again.
        t = bulkprompt.run(rows, output=out, endpoint=url, concurrency=8, **FLAGS)
        assert t.num_rows == 60 and set(t.column("status").to_pylist()) == {"ok"}
        assert requests(url) <= 60 + 2, "at most the calls in flight at the stop again"
    finally:
        slow.terminate()
        slow.wait()
