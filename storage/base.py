"""What every table of the lab's database shares: run states and paths, the rows' JSON
and prompt encoding, the schema helpers, the transaction and the owner check of a run.
storage.db assembles `Store` from one class per kind of table (storage.datasets,
storage.runs, storage.records, storage.comparisons) on top of these."""
from __future__ import annotations

import datetime
import decimal
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any


SCHEMA_VERSION = 5
BUSY_TIMEOUT_MS = 60_000
RUN_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
FINISHED_STATES = ("succeeded", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")                       # a job holds (or will hold) it
RESUMABLE_STATES = ("interrupted", "cancelled", "failed")   # may continue from a checkpoint


class NotFound(KeyError):
    """A dataset, run or row that does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else "not found"


class DatasetExists(ValueError):
    """Raised instead of silently overwriting an existing dataset."""


def data_home() -> Path:
    """The user's data folder: `RLHF_LAB_HOME`, or ~/.rlhf-lab."""
    home = Path(os.environ.get("RLHF_LAB_HOME") or Path.home() / ".rlhf-lab").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def default_db_path() -> Path:
    return data_home() / "lab.db"


def _now() -> float:
    return time.time()


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _loads(value: str | None, default: Any = None) -> Any:
    if value in (None, ""):
        return default
    return json.loads(value)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _value(value: Any) -> Any:
    """A Python value as SQLite stores it (dicts and lists as JSON, as sqlite-utils did)."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=repr, ensure_ascii=False)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (datetime.date, datetime.time, datetime.datetime)):
        return value.isoformat()
    return value


def _columns(names: str, kind: str) -> list[tuple[str, str]]:
    return [(name, kind) for name in names.split()]


def _references(table: str) -> str:
    return f"INTEGER REFERENCES {_quote(table)}({_quote('id')})"


def _create_table(conn: sqlite3.Connection, table: str, columns: list[tuple[str, str]]) -> None:
    """CREATE TABLE IF NOT EXISTS, laid out as sqlite-utils wrote it in databases made
    before (the same schema text either way)."""
    body = ",\n".join(f"   {_quote(name)} {kind}" for name, kind in columns)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {_quote(table)} (\n{body}\n)")


def _create_index(conn: sqlite3.Connection, table: str, columns: list[str],
                  unique: bool = False) -> None:
    name = _quote(f"idx_{table}_{'_'.join(columns)}")
    conn.execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX IF NOT EXISTS {name}\n"
                 f"    ON {_quote(table)} ({', '.join(_quote(c) for c in columns)})")


def _add_columns(conn: sqlite3.Connection, table: str, columns: list[tuple[str, str]]) -> None:
    """ALTER TABLE ADD COLUMN for each column the table does not have yet."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({_quote(table)})")}
    for name, kind in columns:
        if name not in have:
            conn.execute(f"ALTER TABLE {_quote(table)} ADD COLUMN {_quote(name)} {kind}")


def split_prompt(prompt: Any) -> tuple[str, str | None]:
    """Store a prompt as display text plus, for chat prompts, the message list as JSON."""
    if isinstance(prompt, list):
        text = "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)
        return text, _dumps(prompt)
    return str(prompt), None


def _join_prompt(row: dict) -> dict:
    messages = row.pop("prompt_messages", None)
    if messages:
        row["prompt"] = json.loads(messages)
    if "meta" in row:
        row["meta"] = _loads(row["meta"], {})
    return row


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, re-entrant within one thread's connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.outer = False

    def __enter__(self):
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if self.outer and self.conn.in_transaction:
            if exc_type is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")
        return False


def _default_split(index: int, eval_fraction: float) -> str:
    if eval_fraction <= 0:
        return "train"
    # deterministic, spread evenly: every 1/eval_fraction-th row goes to eval
    period = max(2, round(1 / eval_fraction))
    return "eval" if index % period == period - 1 else "train"


def _decode_run(row: dict) -> dict:
    row = dict(row)
    row["config"] = _loads(row.get("config"), {})
    row["parents"] = _loads(row.get("parents"), [])
    row["summary"] = _loads(row.get("summary"), {})
    return row


def _decode_group(row: dict) -> dict:
    row = dict(row)
    row["config"] = _loads(row.get("config"), {})
    row["summary"] = _loads(row.get("summary"), {})
    return row


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# a process's start time is known to about a second (boot time is whole seconds)
_START_SLACK_S = 2.0


def owner_process(run: dict):
    """The live process that claimed `run` (a psutil.Process), or None.

    It must be on this host, alive, and have started no later than the run was claimed
    (`claimed`, else `started`): a pid reused by a process started after the owner died is
    not the owner. A run without either time is matched by pid alone. psutil's Process also
    checks its start time again before `send_signal`, so the pid cannot be reused in between.
    """
    pid, started = run.get("pid"), run.get("claimed") or run.get("started")
    if not pid or run.get("host") != socket.gethostname() or not _pid_alive(pid):
        return None
    import psutil  # a dependency of accelerate

    try:
        proc = psutil.Process(int(pid))
        if started is not None and proc.create_time() > float(started) + _START_SLACK_S:
            return None
        return proc
    except psutil.Error:  # gone meanwhile, or not ours to inspect
        return None
