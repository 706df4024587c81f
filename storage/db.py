"""The lab's SQLite database (the standard library's sqlite3).

One `Store` object per database path; it hands each thread its own connection
(WAL journal, busy timeout) so a training thread, the Streamlit script threads
and a headless CLI process can all write at once without "database is locked".
Every other package talks to storage through the methods here, never through SQL.
"""
from __future__ import annotations

import datetime
import decimal
import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

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


class Store:
    """All reads and writes of the lab's database."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._migrate()

    # -- connections ---------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (WAL journal, busy timeout, foreign keys)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   check_same_thread=False, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
        return conn

    @property
    def db(self):
        """A sqlite-utils view of this thread's connection, for tests and tools. The app
        never uses it: sqlite-utils imports pandas, numpy and pyarrow (about a second),
        which the first page load must not pay; everything here is plain sqlite3."""
        import sqlite_utils

        db = getattr(self._local, "db", None)
        if db is None or db.conn is not self.conn:
            db = self._local.db = sqlite_utils.Database(self.conn)
        return db

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = self._local.db = None

    def _write(self):
        """A write transaction that takes the lock up front (no deadlock on upgrade)."""
        return _Tx(self.conn)

    # -- rows as dicts (the few helpers every read and write below goes through) ----
    def _select(self, table: str, where: str | None = None, args: Iterable = (),
                order_by: str | None = None, limit: int | None = None,
                offset: int | None = None, select: str = "*") -> list[dict]:
        sql = f"SELECT {select} FROM {table}"
        if where:
            sql += f" WHERE {where}"
        if order_by:
            sql += f" ORDER BY {order_by}"
        if limit is not None or offset:
            sql += f" LIMIT {-1 if limit is None else int(limit)}"
        if offset:
            sql += f" OFFSET {int(offset)}"
        cur = self.conn.execute(sql, list(args))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur]

    def _insert(self, table: str, record: dict) -> int:
        """Insert one row; returns its id (rowid)."""
        cols = list(record)
        cur = self.conn.execute(
            f"INSERT INTO {table} ({', '.join(_quote(c) for c in cols)}) "
            f"VALUES ({', '.join('?' * len(cols))})", [_value(record[c]) for c in cols])
        return cur.lastrowid

    def _insert_all(self, table: str, records: Iterable[dict]) -> None:
        records = list(records)
        if not records:
            return
        cols = list(dict.fromkeys(k for r in records for k in r))
        self.conn.executemany(
            f"INSERT INTO {table} ({', '.join(_quote(c) for c in cols)}) "
            f"VALUES ({', '.join('?' * len(cols))})",
            ([_value(r.get(c)) for c in cols] for r in records))

    def _set(self, table: str, row_id: int, fields: dict, what: str) -> None:
        """UPDATE one row by id; NotFound names a row that does not exist."""
        if fields:
            cur = self.conn.execute(
                f"UPDATE {table} SET {', '.join(_quote(c) + ' = ?' for c in fields)} "
                f"WHERE id = ?", [*(_value(v) for v in fields.values()), int(row_id)])
            found = cur.rowcount > 0
        else:
            found = self.conn.execute(f"SELECT 1 FROM {table} WHERE id = ?",
                                      [int(row_id)]).fetchone() is not None
        if not found:
            raise NotFound(f"{what} {row_id} does not exist")

    # -- schema --------------------------------------------------------------------
    def _migrate(self) -> None:
        conn = self.conn
        with self._write():
            _create_table(conn, "meta", [("key", "TEXT PRIMARY KEY"), ("value", "TEXT")])
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version >= SCHEMA_VERSION:
                return
            self._create_v1(conn)
            self._add_v2(conn)
            self._add_v3(conn)
            self._add_v4(conn)
            self._add_v5(conn)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                         [str(SCHEMA_VERSION)])

    @staticmethod
    def _create_v1(conn: sqlite3.Connection) -> None:
        _create_table(conn, "datasets", [
            ("id", "INTEGER PRIMARY KEY"), ("name", "TEXT NOT NULL"), ("kind", "TEXT NOT NULL"),
            ("description", "TEXT"), ("eval_fraction", "REAL"), ("created", "REAL"),
            ("meta", "TEXT")])
        _create_index(conn, "datasets", ["name"], unique=True)
        common = [("id", "INTEGER PRIMARY KEY"), ("dataset_id", _references("datasets")),
                  ("prompt", "TEXT"), ("prompt_messages", "TEXT")]
        tail = [("split", "TEXT"), ("source", "TEXT"), ("meta", "TEXT"), ("created", "REAL")]
        _create_table(conn, "sft_examples", [*common, ("response", "TEXT"), *tail])
        _create_index(conn, "sft_examples", ["dataset_id"])
        _create_table(conn, "pref_pairs", [*common, ("chosen", "TEXT"), ("rejected", "TEXT"),
                                           *tail])
        _create_index(conn, "pref_pairs", ["dataset_id"])
        _create_table(conn, "runs", [
            ("id", "INTEGER PRIMARY KEY"), *_columns(
                "stage name status config parents model dataset", "TEXT"),
            *_columns("created started finished", "REAL"), ("error", "TEXT"),
            ("pid", "INTEGER"), ("host", "TEXT"), ("step", "INTEGER"),
            ("total_steps", "INTEGER"), ("progress", "REAL"), ("message", "TEXT"),
            ("summary", "TEXT"), ("run_dir", "TEXT")])
        _create_index(conn, "runs", ["stage", "status"])
        _create_table(conn, "metrics", [
            ("run_id", _references("runs")), ("step", "INTEGER"), ("name", "TEXT"),
            ("value", "REAL"), ("time", "REAL")])
        _create_index(conn, "metrics", ["run_id", "name", "step"])
        _create_table(conn, "samples", [
            ("id", "INTEGER PRIMARY KEY"), ("run_id", _references("runs")), ("step", "INTEGER"),
            ("prompt", "TEXT"), ("response", "TEXT"), ("reward", "REAL"), ("kl", "REAL"),
            ("extra", "TEXT"), ("time", "REAL")])
        _create_index(conn, "samples", ["run_id", "step"])
        _create_table(conn, "artifacts", [
            ("id", "INTEGER PRIMARY KEY"), ("run_id", _references("runs")), ("kind", "TEXT"),
            ("path", "TEXT"), ("sha256", "TEXT"), ("created", "REAL")])
        _create_table(conn, "logs", [
            ("id", "INTEGER PRIMARY KEY"), ("run_id", _references("runs")), ("time", "REAL"),
            ("level", "TEXT"), ("message", "TEXT")])
        _create_index(conn, "logs", ["run_id"])
        _create_table(conn, "votes", [
            ("id", "INTEGER PRIMARY KEY"), ("comparison_id", "INTEGER"),
            *_columns("prompt model_a model_b response_a response_b choice", "TEXT"),
            *_columns("reward_a reward_b created", "REAL")])
        _create_table(conn, "comparisons", [
            ("id", "INTEGER PRIMARY KEY"), ("name", "TEXT"), ("config", "TEXT"),
            ("run_id", "INTEGER"), ("created", "REAL")])
        _create_table(conn, "comparison_outputs", [
            ("id", "INTEGER PRIMARY KEY"), ("comparison_id", _references("comparisons")),
            ("prompt_index", "INTEGER"), ("prompt", "TEXT"), ("model", "TEXT"),
            ("response", "TEXT"), ("reward", "REAL"), ("kl", "REAL"), ("length", "INTEGER"),
            ("extra", "TEXT")])
        _create_index(conn, "comparison_outputs", ["comparison_id"])

    @staticmethod
    def _add_v2(conn: sqlite3.Connection) -> None:
        """Runs know more of their attempts: when the run was (last) queued, when this
        attempt was claimed (`started` is the first start, kept across resumes), the step and
        time of this attempt's first step report (the pace of the ETA), and a cancel asked."""
        _add_columns(conn, "runs", [("enqueued", "REAL"), ("claimed", "REAL"),
                                    ("attempt_step", "INTEGER"), ("attempt_time", "REAL"),
                                    ("cancel_requested", "REAL")])

    @staticmethod
    def _add_v4(conn: sqlite3.Connection) -> None:
        """The time of a run's latest step report (the ETA counts down from it) and the
        seconds its earlier attempts ran (a resumed run's duration leaves out its pauses)."""
        _add_columns(conn, "runs", [("step_time", "REAL"), ("earlier_seconds", "REAL")])

    @staticmethod
    def _add_v5(conn: sqlite3.Connection) -> None:
        """Capability answers of a comparison (issue 24): each model's greedy answer to each
        question of the set, its references and whether it matched."""
        _create_table(conn, "capability_answers", [
            ("id", "INTEGER PRIMARY KEY"), ("comparison_id", _references("comparisons")),
            *_columns("model source question_id lang prompt refs answer", "TEXT"),
            ("correct", "INTEGER")])
        _create_index(conn, "capability_answers", ["comparison_id"])

    @staticmethod
    def _add_v3(conn: sqlite3.Connection) -> None:
        """Run groups (a sweep or an experiment recipe: one orchestrating run, its child
        runs tagged with `group_id` and the plan's `group_key`) and constitutions (named,
        versioned lists of principles for AI feedback)."""
        _create_table(conn, "run_groups", [
            ("id", "INTEGER PRIMARY KEY"), *_columns("name stage recipe config status", "TEXT"),
            ("run_id", "INTEGER"), ("created", "REAL"), ("summary", "TEXT")])
        _add_columns(conn, "runs", [("group_id", "INTEGER"), ("group_key", "TEXT")])
        _create_index(conn, "runs", ["group_id"])
        _create_table(conn, "constitutions", [
            ("id", "INTEGER PRIMARY KEY"), ("name", "TEXT NOT NULL"),
            ("version", "INTEGER NOT NULL"), ("language", "TEXT"), ("description", "TEXT"),
            ("principles", "TEXT"), ("created", "REAL")])
        _create_index(conn, "constitutions", ["name", "version"], unique=True)

    def schema_version(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    # -- settings of this database (the `meta` key/value table, there since version 1) --
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str, only_if_absent: bool = False) -> bool:
        """Store `value` under `key`; with only_if_absent=True an existing value is kept.
        Returns whether this call wrote it (one writer wins when several race)."""
        if key == "schema_version":
            raise ValueError("meta key 'schema_version' is kept by the migrations")
        verb = "INSERT OR IGNORE" if only_if_absent else "INSERT OR REPLACE"
        with self._write():
            cur = self.conn.execute(f"{verb} INTO meta (key, value) VALUES (?, ?)", [key, str(value)])
        return cur.rowcount > 0

    # -- datasets ------------------------------------------------------------------
    def create_dataset(self, name: str, kind: str, description: str = "",
                       eval_fraction: float = 0.1, overwrite: bool = False) -> int:
        """Create a dataset; an existing name raises DatasetExists unless overwrite=True."""
        name = (name or "").strip()
        if not name:
            raise ValueError("dataset name: must not be empty")
        if kind not in ("sft", "preference"):
            raise ValueError(f"dataset kind: {kind!r} is not 'sft' or 'preference'")
        with self._write():
            existing = self._dataset_row(name)
            if existing is not None:
                if not overwrite:
                    raise DatasetExists(f"dataset {name!r} already exists")
                self._delete_dataset_rows(existing["id"])
            return self._insert("datasets", {
                "name": name, "kind": kind, "description": description,
                "eval_fraction": eval_fraction, "created": _now(), "meta": "{}"})

    def _dataset_row(self, name_or_id: str | int) -> dict | None:
        if isinstance(name_or_id, int) or (isinstance(name_or_id, str) and name_or_id.isdigit()
                                           and self._by_name(name_or_id) is None):
            rows = self._select("datasets", "id = ?", [int(name_or_id)])
        else:
            rows = [r for r in [self._by_name(str(name_or_id))] if r]
        return rows[0] if rows else None

    def _by_name(self, name: str) -> dict | None:
        rows = self._select("datasets", "name = ?", [name])
        return rows[0] if rows else None

    def get_dataset(self, name_or_id: str | int) -> dict:
        row = self._dataset_row(name_or_id)
        if row is None:
            raise NotFound(f"dataset {name_or_id!r} does not exist")
        row["meta"] = _loads(row["meta"], {})
        table = "sft_examples" if row["kind"] == "sft" else "pref_pairs"
        row["rows"] = self.conn.execute(
            f"SELECT COUNT(*) FROM {table} WHERE dataset_id = ?", [row["id"]]).fetchone()[0]
        return row

    def list_datasets(self, kind: str | None = None) -> list[dict]:
        out = []
        for row in self._select("datasets", "kind = ?" if kind else None,
                                [kind] if kind else [], order_by="name"):
            out.append(self.get_dataset(row["id"]))
        return out

    def update_dataset(self, name_or_id: str | int, **fields: Any) -> None:
        row = self.get_dataset(name_or_id)
        allowed = {"name", "description", "eval_fraction", "meta"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"dataset fields {sorted(bad)} cannot be changed")
        if "meta" in fields:
            fields["meta"] = _dumps(fields["meta"])
        with self._write():
            self._set("datasets", row["id"], fields, "dataset")

    def delete_dataset(self, name_or_id: str | int) -> None:
        row = self.get_dataset(name_or_id)
        with self._write():
            self._delete_dataset_rows(row["id"])

    def _delete_dataset_rows(self, dataset_id: int) -> None:
        self.conn.execute("DELETE FROM sft_examples WHERE dataset_id = ?", [dataset_id])
        self.conn.execute("DELETE FROM pref_pairs WHERE dataset_id = ?", [dataset_id])
        self.conn.execute("DELETE FROM datasets WHERE id = ?", [dataset_id])

    def _rows_table(self, dataset: dict) -> str:
        return "sft_examples" if dataset["kind"] == "sft" else "pref_pairs"

    def add_rows(self, name_or_id: str | int, rows: Iterable[dict], source: str = "") -> int:
        """Append records ({prompt, response} or {prompt, chosen, rejected}) to a dataset.

        `split` may be given per row ('train' or 'eval'); otherwise it is drawn from the
        dataset's eval fraction by a stable hash of the row's position.
        """
        ds = self.get_dataset(name_or_id)
        table = self._rows_table(ds)
        fields = ("response",) if ds["kind"] == "sft" else ("chosen", "rejected")
        start = ds["rows"]
        records = []
        for i, row in enumerate(rows):
            text, messages = split_prompt(row["prompt"])
            rec = {"dataset_id": ds["id"], "prompt": text, "prompt_messages": messages,
                   "split": row.get("split") or _default_split(start + i, ds["eval_fraction"]),
                   "source": row.get("source", source), "meta": _dumps(row.get("meta") or {}),
                   "created": _now()}
            for f in fields:
                rec[f] = row[f]
            records.append(rec)
        with self._write():
            self._insert_all(table, records)
        return len(records)

    def list_rows(self, name_or_id: str | int, split: str | None = None,
                  limit: int | None = None, offset: int = 0) -> list[dict]:
        ds = self.get_dataset(name_or_id)
        where, args = "dataset_id = ?", [ds["id"]]
        if split:
            where += " AND split = ?"
            args.append(split)
        rows = self._select(self._rows_table(ds), where, args, order_by="id", limit=limit,
                            offset=offset or None)
        return [_join_prompt(dict(r)) for r in rows]

    def update_row(self, name_or_id: str | int, row_id: int, fields: dict) -> None:
        ds = self.get_dataset(name_or_id)
        allowed = {"prompt", "response", "chosen", "rejected", "split", "meta", "source"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"row fields {sorted(bad)} cannot be changed")
        fields = dict(fields)
        if "prompt" in fields:
            fields["prompt"], fields["prompt_messages"] = split_prompt(fields["prompt"])
        if "meta" in fields:
            fields["meta"] = _dumps(fields["meta"])
        with self._write():
            self._set(self._rows_table(ds), row_id, fields, f"dataset {ds['name']!r} row")

    def delete_rows(self, name_or_id: str | int, row_ids: Iterable[int]) -> int:
        ds = self.get_dataset(name_or_id)
        ids = [int(i) for i in row_ids]
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._write():
            cur = self.conn.execute(
                f"DELETE FROM {self._rows_table(ds)} WHERE dataset_id = ? AND id IN ({marks})",
                [ds["id"], *ids])
        return cur.rowcount

    def set_splits(self, name_or_id: str | int, eval_ids: Iterable[int]) -> None:
        """Rows whose id is in `eval_ids` go to 'eval', every other row to 'train' (one write)."""
        ds = self.get_dataset(name_or_id)
        table, ids = self._rows_table(ds), sorted({int(i) for i in eval_ids})
        with self._write():
            self.conn.execute(f"UPDATE {table} SET split = 'train' WHERE dataset_id = ?", [ds["id"]])
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                self.conn.execute(f"UPDATE {table} SET split = 'eval' WHERE dataset_id = ? AND id IN "
                                f"({','.join('?' * len(chunk))})", [ds["id"], *chunk])

    def move_rows(self, from_dataset: str | int, to_dataset: str | int) -> int:
        """Move every row of one dataset into another of the same kind, then drop the first,
        in one transaction (an import staged aside lands whole or not at all)."""
        src, dst = self.get_dataset(from_dataset), self.get_dataset(to_dataset)
        if src["kind"] != dst["kind"]:
            raise ValueError(f"dataset {dst['name']!r} holds {dst['kind']} rows, "
                             f"not {src['kind']} rows")
        with self._write():
            cur = self.conn.execute(f"UPDATE {self._rows_table(src)} SET dataset_id = ? "
                                  f"WHERE dataset_id = ?", [dst["id"], src["id"]])
            self.conn.execute("DELETE FROM datasets WHERE id = ?", [src["id"]])
        return cur.rowcount

    def replace_dataset(self, name: str, by: str | int, overwrite: bool = True) -> None:
        """Dataset `by` takes the place (and the name) of dataset `name`, atomically; the old
        one's rows are deleted. `name` need not exist. With overwrite=False an existing
        `name` raises DatasetExists instead, checked in the same transaction (so a dataset
        created meanwhile by another import is never replaced)."""
        new = self.get_dataset(by)
        with self._write():
            old = self._by_name(name)
            if old is not None and not overwrite and old["id"] != new["id"]:
                raise DatasetExists(f"dataset {name!r} already exists")
            if old is not None and old["id"] != new["id"]:
                self._delete_dataset_rows(old["id"])
            self.conn.execute("UPDATE datasets SET name = ? WHERE id = ?", [name, new["id"]])

    # -- runs ----------------------------------------------------------------------
    def create_run(self, stage: str, config: dict, name: str | None = None,
                   parents: list[int] | None = None, model: str | None = None,
                   dataset: str | None = None, status: str = "queued",
                   group_id: int | None = None, group_key: str | None = None) -> int:
        """A new run row; `group_id`/`group_key` tag a run of a run group (its plan's key)."""
        return self._insert_named("runs", stage, {
            "stage": stage, "name": name or "", "status": status, "config": _dumps(config),
            "parents": _dumps(parents or []), "model": model, "dataset": dataset,
            "created": _now(), "enqueued": _now(), "step": 0, "progress": 0.0,
            "summary": "{}", "group_id": group_id, "group_key": group_key})

    def _insert_named(self, table_name: str, prefix: str, row: dict) -> int:
        """Insert a row; without a name it is named `<prefix>-<id>`. Returns the id."""
        with self._write():
            row_id = self._insert(table_name, row)
            if not row.get("name"):
                self._set(table_name, row_id, {"name": f"{prefix}-{row_id}"}, prefix)
        return row_id

    def _row(self, table_name: str, row_id: int, what: str) -> dict:
        rows = self._select(table_name, "id = ?", [int(row_id)])
        if not rows:
            raise NotFound(f"{what} {row_id} does not exist")
        return rows[0]

    def get_run(self, run_id: int) -> dict:
        return _decode_run(self._row("runs", run_id, "run"))

    def list_runs(self, stage: str | None = None, status: str | Iterable[str] | None = None,
                  limit: int | None = None) -> list[dict]:
        where, args = [], []
        if stage:
            where.append("stage = ?")
            args.append(stage)
        if status:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        rows = self._select("runs", " AND ".join(where) or None, args, order_by="id DESC",
                            limit=limit)
        return [_decode_run(r) for r in rows]

    def update_run(self, run_id: int, **fields: Any) -> None:
        self._update("runs", run_id, fields, ("config", "parents", "summary"), "run")

    def _update(self, table_name: str, row_id: int, fields: dict, json_keys: tuple,
                what: str) -> None:
        """Update a run or group row: JSON fields encoded, the status checked."""
        for key in json_keys:
            if key in fields:
                fields[key] = _dumps(fields[key])
        if "status" in fields and fields["status"] not in RUN_STATES:
            raise ValueError(f"{what} status {fields['status']!r} is not one of {RUN_STATES}")
        with self._write():
            self._set(table_name, int(row_id), fields, what)

    def claim_run(self, run_id: int) -> None:
        """Mark a run as running in this process (pid and host kept for crash detection).
        `started` is set by the first attempt only (a resumed run keeps its first start);
        `claimed` is this attempt's start, and its pace starts afresh."""
        now = _now()
        self.update_run(run_id, status="running", started=self.get_run(run_id)["started"] or now,
                        claimed=now, attempt_step=None, attempt_time=None, step_time=None,
                        finished=None,
                        error=None, pid=os.getpid(), host=socket.gethostname())

    def request_cancel(self, run_id: int) -> None:
        """Record that a cancel was asked (every session shows the run as cancelling until
        it stops); `requeue_run` clears it."""
        self.update_run(run_id, cancel_requested=_now())

    def requeue_run(self, run_id: int) -> None:
        """Queue a finished run again (a resume): at the back of its queue, no cancel asked.
        The attempt that ended is added to `earlier_seconds` (the time it sat stopped is not)."""
        run = self.get_run(run_id)
        earlier = run.get("earlier_seconds") or 0.0
        began = run.get("claimed") or run.get("started")
        if run.get("finished") and began:
            earlier += max(0.0, run["finished"] - began)
        self.update_run(run_id, status="queued", error=None, finished=None, enqueued=_now(),
                        cancel_requested=None, earlier_seconds=earlier)

    def finish_run(self, run_id: int, status: str, error: str | None = None,
                   summary: dict | None = None) -> None:
        fields: dict[str, Any] = {"status": status, "finished": _now(), "error": error}
        if summary is not None:
            fields["summary"] = summary
        self.update_run(run_id, **fields)

    def mark_interrupted_orphans(self, live_run_ids: Iterable[int] = ()) -> list[int]:
        """Runs left `running`/`queued` by a process that no longer exists become `interrupted`."""
        live = set(int(i) for i in live_run_ids)
        host = socket.gethostname()
        orphans = []
        for run in self.list_runs(status=ACTIVE_STATES):
            if run["id"] in live:
                continue
            same_process = run.get("pid") == os.getpid() and run.get("host") == host
            if not same_process and owner_process(run) is not None:
                continue  # another live process (e.g. a headless CLI run) owns it
            orphans.append(run["id"])
        for run_id in orphans:
            self.update_run(run_id, status="interrupted", finished=_now(),
                            message="interrupted: the process running it stopped")
        return orphans

    def delete_run(self, run_id: int) -> None:
        with self._write():
            for table in ("metrics", "samples", "artifacts", "logs"):
                self.conn.execute(f"DELETE FROM {table} WHERE run_id = ?", [int(run_id)])
            self.conn.execute("DELETE FROM runs WHERE id = ?", [int(run_id)])

    def delete_after_step(self, run_id: int, step: int) -> None:
        """Drop a run's metrics and samples logged after `step` (a resume from the
        checkpoint of `step` redoes those steps; this keeps the curves single-valued)."""
        with self._write():
            for table in ("metrics", "samples"):
                self.conn.execute(f"DELETE FROM {table} WHERE run_id = ? AND step > ?",
                                [int(run_id), int(step)])

    # -- run groups (sweeps and experiment recipes: engine.experiments) --------------
    def create_group(self, name: str, config: dict, stage: str | None = None,
                     recipe: str | None = None, status: str = "queued") -> int:
        """A run group: `config` holds its plan ({"plan": [planned runs], ...}); its runs are
        tagged with the group's id and their plan key (create_run's group_id/group_key)."""
        if status not in RUN_STATES:
            raise ValueError(f"group status {status!r} is not one of {RUN_STATES}")
        return self._insert_named("run_groups", recipe or stage or "group", {
            "name": name or "", "stage": stage, "recipe": recipe, "config": _dumps(config),
            "status": status, "run_id": None, "created": _now(), "summary": "{}"})

    def get_group(self, group_id: int) -> dict:
        return _decode_group(self._row("run_groups", group_id, "run group"))

    def list_groups(self, limit: int | None = None) -> list[dict]:
        """Every group, newest first, each with `counts` ({status: runs of the group})."""
        counts: dict[int, dict[str, int]] = {}
        for group_id, status, n in self.conn.execute(
                "SELECT group_id, status, COUNT(*) FROM runs WHERE group_id IS NOT NULL "
                "GROUP BY group_id, status"):
            counts.setdefault(group_id, {})[status] = n
        out = []
        for row in self._select("run_groups", order_by="id DESC", limit=limit):
            group = _decode_group(row)
            group["counts"] = counts.get(group["id"], {})
            out.append(group)
        return out

    def update_group(self, group_id: int, **fields: Any) -> None:
        self._update("run_groups", group_id, fields, ("config", "summary"), "group")

    def group_runs(self, group_id: int) -> list[dict]:
        """The runs of a group, in the order they were created (deleted ones are gone)."""
        rows = self._select("runs", "group_id = ?", [int(group_id)], order_by="id")
        return [_decode_run(r) for r in rows]

    def delete_group(self, group_id: int) -> None:
        """Forget a group; its runs stay (untagged), like any run."""
        with self._write():
            self.conn.execute("UPDATE runs SET group_id = NULL, group_key = NULL "
                            "WHERE group_id = ?", [int(group_id)])
            self.conn.execute("DELETE FROM run_groups WHERE id = ?", [int(group_id)])

    # -- metrics, samples, logs, artifacts -----------------------------------------
    def log_metrics(self, run_id: int, step: int, values: dict[str, float]) -> None:
        t = _now()
        rows = [{"run_id": int(run_id), "step": int(step), "name": k, "value": float(v), "time": t}
                for k, v in values.items() if v is not None]
        with self._write():
            self._insert_all("metrics", rows)

    def get_metrics(self, run_id: int, names: Iterable[str] | None = None) -> list[dict]:
        where, args = "run_id = ?", [int(run_id)]
        if names:
            names = list(names)
            where += f" AND name IN ({','.join('?' * len(names))})"
            args.extend(names)
        return self._select("metrics", where, args, order_by="step, rowid",
                            select="step, name, value, time")

    def metric_names(self, run_id: int) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT name FROM metrics WHERE run_id = ? ORDER BY name", [int(run_id)])]

    def last_metrics(self, run_id: int) -> dict[str, float]:
        """The latest value of each metric of a run."""
        rows = self.conn.execute(
            "SELECT name, value FROM metrics WHERE rowid IN "
            "(SELECT MAX(rowid) FROM metrics WHERE run_id = ? GROUP BY name)", [int(run_id)])
        return {name: value for name, value in rows}

    def runs_overview(self, stage: str | None = None,
                      status: str | Iterable[str] | None = None) -> list[dict]:
        """list_runs(), each run with `last_metrics` ({name: latest value}) and `n_metrics`
        (rows stored), from one aggregate query over all runs instead of one per run."""
        runs = self.list_runs(stage=stage, status=status)
        last: dict[int, dict[str, float]] = {}
        for run_id, name, value in self.conn.execute(
                "SELECT run_id, name, value FROM metrics WHERE rowid IN "
                "(SELECT MAX(rowid) FROM metrics GROUP BY run_id, name)"):
            last.setdefault(run_id, {})[name] = value
        counts = dict(self.conn.execute("SELECT run_id, COUNT(*) FROM metrics GROUP BY run_id"))
        for run in runs:
            run["last_metrics"] = last.get(run["id"], {})
            run["n_metrics"] = counts.get(run["id"], 0)
        return runs

    def add_samples(self, run_id: int, step: int, rows: Iterable[dict]) -> None:
        recs = []
        for r in rows:
            r = dict(r)
            prompt = r.pop("prompt")
            recs.append({"run_id": int(run_id), "step": int(step),
                         "prompt": split_prompt(prompt)[0] if isinstance(prompt, list) else prompt,
                         "response": r.pop("response"), "reward": r.pop("reward", None),
                         "kl": r.pop("kl", None), "extra": _dumps(r), "time": _now()})
        with self._write():
            self._insert_all("samples", recs)

    def get_samples(self, run_id: int, step: int | None = None) -> list[dict]:
        where, args = "run_id = ?", [int(run_id)]
        if step is not None:
            where += " AND step = ?"
            args.append(int(step))
        rows = []
        for r in self._select("samples", where, args, order_by="step, id"):
            r["extra"] = _loads(r["extra"], {})
            rows.append(r)
        return rows

    def log(self, run_id: int, message: str, level: str = "info") -> None:
        with self._write():
            self._insert("logs", {"run_id": int(run_id), "time": _now(), "level": level,
                                  "message": message})

    def get_log(self, run_id: int, limit: int | None = None) -> list[dict]:
        return self._select("logs", "run_id = ?", [int(run_id)], order_by="id", limit=limit)

    def add_artifact(self, run_id: int, kind: str, path: str | os.PathLike,
                     sha256: str | None = None) -> int:
        with self._write():
            return self._insert("artifacts", {"run_id": int(run_id), "kind": kind,
                                              "path": str(path), "sha256": sha256,
                                              "created": _now()})

    def list_artifacts(self, run_id: int, kind: str | None = None) -> list[dict]:
        where, args = "run_id = ?", [int(run_id)]
        if kind:
            where += " AND kind = ?"
            args.append(kind)
        return self._select("artifacts", where, args, order_by="id")

    # -- comparisons and votes -----------------------------------------------------
    def create_comparison(self, name: str, config: dict, run_id: int | None = None) -> int:
        with self._write():
            return self._insert("comparisons", {"name": name, "config": _dumps(config),
                                                "run_id": run_id, "created": _now()})

    def list_comparisons(self) -> list[dict]:
        out = []
        for r in self._select("comparisons", order_by="id DESC"):
            r["config"] = _loads(r["config"], {})
            out.append(r)
        return out

    def get_comparison(self, comparison_id: int) -> dict:
        rows = self._select("comparisons", "id = ?", [int(comparison_id)])
        if not rows:
            raise NotFound(f"comparison {comparison_id} does not exist")
        row = rows[0]
        row["config"] = _loads(row["config"], {})
        return row

    def add_comparison_outputs(self, comparison_id: int, rows: Iterable[dict]) -> None:
        recs = []
        for r in rows:
            r = dict(r)
            recs.append({"comparison_id": int(comparison_id),
                         "prompt_index": int(r.pop("prompt_index")),
                         "prompt": split_prompt(r.pop("prompt"))[0],
                         "model": r.pop("model"), "response": r.pop("response"),
                         "reward": r.pop("reward", None), "kl": r.pop("kl", None),
                         "length": r.pop("length", None), "extra": _dumps(r)})
        with self._write():
            self._insert_all("comparison_outputs", recs)

    def get_comparison_outputs(self, comparison_id: int) -> list[dict]:
        rows = []
        for r in self._select("comparison_outputs", "comparison_id = ?", [int(comparison_id)],
                              order_by="prompt_index, id"):
            r["extra"] = _loads(r["extra"], {})
            rows.append(r)
        return rows

    def add_capability_answers(self, comparison_id: int, rows: Iterable[dict]) -> None:
        """Rows {model, source, question_id, lang, prompt, references, answer, correct}."""
        recs = [{"comparison_id": int(comparison_id), "model": r["model"],
                 "source": str(r.get("source") or ""), "question_id": str(r["question_id"]),
                 "lang": r.get("lang"), "prompt": split_prompt(r["prompt"])[0],
                 "refs": _dumps(list(r["references"])), "answer": r["answer"],
                 "correct": int(bool(r["correct"]))} for r in rows]
        with self._write():
            self._insert_all("capability_answers", recs)

    def get_capability_answers(self, comparison_id: int) -> list[dict]:
        rows = []
        for r in self._select("capability_answers", "comparison_id = ?", [int(comparison_id)],
                              order_by="id"):
            r["references"] = _loads(r.pop("refs"), [])
            r["correct"] = bool(r["correct"])
            rows.append(r)
        return rows

    def add_vote(self, prompt: str, model_a: str, model_b: str, response_a: str,
                 response_b: str, choice: str, reward_a: float | None = None,
                 reward_b: float | None = None, comparison_id: int | None = None) -> int:
        if choice not in ("a", "b", "tie", "both_bad"):
            raise ValueError(f"vote choice {choice!r} is not a, b, tie or both_bad")
        with self._write():
            return self._insert("votes", {
                "comparison_id": comparison_id, "prompt": prompt, "model_a": model_a,
                "model_b": model_b, "response_a": response_a, "response_b": response_b,
                "choice": choice, "reward_a": reward_a, "reward_b": reward_b,
                "created": _now()})

    def list_votes(self, comparison_id: int | None = None) -> list[dict]:
        if comparison_id is None:
            return self._select("votes", order_by="id")
        return self._select("votes", "comparison_id = ?", [int(comparison_id)], order_by="id")


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
