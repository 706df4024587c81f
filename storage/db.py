"""The lab's SQLite database (the standard library's sqlite3).

One `Store` object per database path; it hands each thread its own connection
(WAL journal, busy timeout) so a training thread, the Streamlit script threads
and a headless CLI process can all write at once without "database is locked".
Every other package talks to storage through the methods here, never through SQL.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from storage.base import (BUSY_TIMEOUT_MS, NotFound, SCHEMA_VERSION, _Tx, _add_columns, _columns,
                          _create_index, _create_table, _quote, _references, _value,
                          default_db_path)
# what callers import from storage.db (their home is storage.base)
from storage.base import (ACTIVE_STATES, DatasetExists, FINISHED_STATES,  # noqa: F401
                          RESUMABLE_STATES, RUN_STATES, _default_split, _now, data_home,
                          owner_process, split_prompt)
from storage.comparisons import ComparisonTables
from storage.datasets import DatasetTables
from storage.records import RunRecords
from storage.runs import RunTables


class Store(DatasetTables, RunTables, RunRecords, ComparisonTables):
    """All reads and writes of the lab's database: the connections, the row helpers and the
    schema here, one class per kind of table in the classes it is made of."""

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
