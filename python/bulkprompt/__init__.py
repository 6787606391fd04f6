"""bulkprompt from Python: the same runner as the command line, with the same promises.

    import bulkprompt
    table = bulkprompt.run(rows, output="out/labels.parquet", template="Label: {text}",
                           model="google/gemini-2.5-flash", provider="openrouter",
                           json_schema="labels.schema.json", max_cost=2)

`run` writes `data` to a job file beside the output (unless it is one already), runs the
`bulkprompt` binary on it as a subprocess (signals, crash isolation, one code path), and returns
one row per id in the input's order as a `pyarrow.Table`. Calling it again with the same output
resumes: nothing already answered is sent again. A run that does not finish raises `RunError`
(`BudgetReached` at the cost cap) with the exit code, the summary and the message the command
line printed; Ctrl-C stops the run as SIGINT does and leaves it resumable.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["run", "estimate", "status", "binary", "RunError", "BudgetReached"]

Data = Union[str, "os.PathLike[str]", Iterable[Mapping[str, Any]], pa.Table, Any]


class RunError(Exception):
    """A run that did not finish with every job ok.

    `exit_code` is the command line's (README: 1 input, 2 failed jobs, 3 cap, 4 aborted, 5 output,
    130 interrupted), `summary` the run's summary as a dict (`None` when the run stopped before
    it had one), `message` what the command line printed on stderr, `table` what the output
    holds (when it holds anything).
    """

    def __init__(self, exit_code: int, summary: Optional[dict], message: str, table: Optional[pa.Table] = None):
        super().__init__(message.strip() or f"bulkprompt exited with {exit_code}")
        self.exit_code = exit_code
        self.summary = summary
        self.message = message
        self.table = table


class BudgetReached(RunError):
    """The run stopped at `max_cost` (exit 3); a larger cap continues it."""


def binary() -> str:
    """The `bulkprompt` executable: `$BULKPROMPT_BIN`, the one this package installed, or PATH's."""
    env = os.environ.get("BULKPROMPT_BIN")
    if env:
        return env
    name = "bulkprompt.exe" if sys.platform == "win32" else "bulkprompt"
    beside = Path(sysconfig.get_path("scripts")) / name
    if beside.exists():
        return str(beside)
    found = shutil.which("bulkprompt")
    if found:
        return found
    raise FileNotFoundError("the bulkprompt binary is not installed: pip install bulkprompt, or set BULKPROMPT_BIN")


def _flags(flags: Mapping[str, Any]) -> list:
    """`max_cost=0.5` -> `--max-cost 0.5`; `True` -> `--flag`; a list -> the flag repeated."""
    out = []
    for key, value in flags.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, str(value)]
    return out


def _as_table(data: Any) -> Optional[pa.Table]:
    """A pyarrow Table, a pandas or polars DataFrame as one; `None` for anything else."""
    if isinstance(data, pa.Table):
        return data
    module = type(data).__module__.split(".")[0]
    if module == "pandas":
        return pa.Table.from_pandas(data, preserve_index=False)
    if module == "polars":
        return data.to_arrow()
    return None


def _job_file(data: Data, output: Path) -> tuple:
    """The job file to run and the extra flags it needs: `data` itself when it is a path, else
    `data` written beside the output with a stable `id` column (the row's position when it has
    none)."""
    if isinstance(data, (str, os.PathLike)):
        return Path(data), []
    jobs = output.parent / f".{output.name}.jobs"
    table = _as_table(data)
    if table is not None:
        if "id" not in table.column_names:
            table = table.append_column("id", pa.array([str(i) for i in range(table.num_rows)]))
        path = jobs.with_suffix(".parquet")
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path, ["--id-column", "id"]
    path = jobs.with_suffix(".jsonl")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, row in enumerate(data):
            row = dict(row)
            row.setdefault("id", str(i))
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path, []


def _common(template, model, provider, endpoint, api_key_env, json_schema, flags) -> list:
    named = {
        "template": template,
        "model": model,
        "provider": provider,
        "endpoint": endpoint,
        "api_key_env": api_key_env,
        "json_schema": json_schema,
    }
    return _flags(named) + _flags(flags)


def _call(args: list, on_line: Optional[Callable[[str], None]] = None) -> tuple:
    """Runs the binary; returns (exit code, stderr). SIGINT in Python stops it as SIGINT does."""
    quiet = on_line is not None or not sys.stderr.isatty()
    proc = subprocess.Popen(
        [binary(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if quiet else None,
        text=True,
    )
    err = []
    try:
        if quiet:
            for line in proc.stderr:
                err.append(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
        out, _ = proc.communicate()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    return proc.returncode, out, "".join(err)


def _bar_feeder(bar: Any) -> Callable[[str], None]:
    """Feeds a tqdm-compatible bar (`update(n)`, `total`) from JSON log lines: each progress
    line's `done` and `to_do`, and the summary's count at the end."""
    seen = [0]

    def feed(line: str) -> None:
        try:
            fields = json.loads(line).get("fields", {})
        except ValueError:
            return
        summary = fields.get("summary")
        if isinstance(summary, dict):
            done = summary.get("ok", 0) + summary.get("failed", 0)
        elif "done" in fields:
            done = fields["done"]
            if getattr(bar, "total", None) in (None, 0) and "to_do" in fields:
                bar.total = fields["to_do"]
        else:
            return
        if done > seen[0]:
            bar.update(done - seen[0])
            seen[0] = done

    return feed


def _read_output(output: Path) -> Optional[pa.Table]:
    """The output as a table, one row per id in the input's order (typed `parsed_*` columns)."""
    if not output.exists():
        return None
    parquet = output
    if output.suffix.lower() != ".parquet":
        fd, name = tempfile.mkstemp(suffix=".parquet", dir=output.parent)
        os.close(fd)
        parquet = Path(name)
        code, _, err = _call(["export", str(output), "-o", str(parquet)], on_line=lambda _: None)
        if code != 0:
            parquet.unlink(missing_ok=True)
            raise RunError(code, None, err)
    try:
        table = pq.read_table(parquet)
    finally:
        if parquet != output:
            parquet.unlink(missing_ok=True)
    return table.sort_by("index")


def run(
    data: Data,
    *,
    output: Union[str, "os.PathLike[str]"],
    template: Optional[str] = None,
    model: Optional[str] = None,
    provider: Optional[str] = None,
    endpoint: Optional[str] = None,
    api_key_env: Optional[str] = None,
    json_schema: Optional[Union[str, "os.PathLike[str]"]] = None,
    progress: Optional[Callable[[str], None]] = None,
    **flags: Any,
) -> pa.Table:
    """Runs `data` (a job file, a list of dicts, a pandas or polars DataFrame, a pyarrow Table)
    and returns one row per id: `id`, `status`, `content`, `parsed` and the typed `parsed_*`
    columns, `cost_usd`, usage, the error. `flags` are the `run` flags (`max_cost=0.5`,
    `rpm=600`, `mode="batch"`, `dedupe=True`). `progress` is a tqdm-compatible bar (anything
    with `update(n)`, and `total`), fed as jobs get their records, or a function called with
    each line the run logs; without it the progress goes to stderr when that is a terminal. Raises `RunError` (`BudgetReached` at the cap) unless every job ends ok."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    job, extra = _job_file(data, output)
    summary_path = output.parent / f".{output.name}.summary.json"
    args = ["run", str(job), "-o", str(output), "--summary-json", str(summary_path), *extra]
    on_line = progress
    if progress is not None and hasattr(progress, "update"):
        # A tqdm-like bar: fed from the run's JSON progress lines (no dependency on tqdm).
        on_line = _bar_feeder(progress)
        args += ["--log-format", "json"]
    if progress is not None:
        args.append("--progress-log")
    args += _common(template, model, provider, endpoint, api_key_env, json_schema, flags)
    code, _, err = _call(args, on_line=on_line)
    summary = None
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
    if code == 0:
        return _read_output(output)
    table = _read_output(output) if code in (2, 3, 4, 5, 130) else None
    kind = BudgetReached if code == 3 else RunError
    message = (summary or {}).get("message") or err
    raise kind(code, summary, message, table)


def estimate(data: Data, *, output: Optional[Union[str, "os.PathLike[str]"]] = None, template=None, model=None,
             provider=None, endpoint=None, api_key_env=None, json_schema=None, **flags: Any) -> dict:
    """What `data` would cost and take (`bulkprompt estimate --json`); sends nothing unless
    `calibrate=N`."""
    where = Path(output) if output is not None else Path(tempfile.mkdtemp()) / "estimate.jsonl"
    job, extra = _job_file(data, where)
    args = ["estimate", str(job), "--json", *extra]
    if output is not None:
        args += ["-o", str(output)]
    args += _common(template, model, provider, endpoint, api_key_env, json_schema, flags)
    code, out, err = _call(args, on_line=lambda _: None)
    if code != 0:
        raise RunError(code, None, err)
    return json.loads(out)


def status(output: Union[str, "os.PathLike[str]"]) -> dict:
    """How an output stands against its job file (`bulkprompt status --json`)."""
    code, out, err = _call(["status", str(output), "--json"], on_line=lambda _: None)
    if code not in (0, 2):
        raise RunError(code, None, err)
    return json.loads(out)
