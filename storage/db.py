"""The lab's SQLite database, through sqlite-utils.

One `Store` object per database path; it hands each thread its own connection
(WAL journal, busy timeout) so a training thread, the Streamlit script threads
and a headless CLI process can all write at once without "database is locked".
Every other package talks to storage through the methods here, never through SQL.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import sqlite_utils

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
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   check_same_thread=False, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.conn.close()
            self._local.db = None

    def _write(self):
        """A write transaction that takes the lock up front (no deadlock on upgrade)."""
        return _Tx(self.db.conn)

    def _migrate(self) -> None:
        db = self.db
        with self._write():
            if "meta" not in db.table_names():
                db["meta"].create({"key": str, "value": str}, pk="key")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version >= SCHEMA_VERSION:
                return
            self._create_v1(db)
            self._add_v2(db)
            self._add_v3(db)
            self._add_v4(db)
            self._add_v5(db)
            db["meta"].upsert({"key": "schema_version", "value": str(SCHEMA_VERSION)}, pk="key")

    @staticmethod
    def _create_v1(db: sqlite_utils.Database) -> None:
        db["datasets"].create(
            {"id": int, "name": str, "kind": str, "description": str, "eval_fraction": float,
             "created": float, "meta": str},
            pk="id", not_null={"name", "kind"}, if_not_exists=True)
        db["datasets"].create_index(["name"], unique=True, if_not_exists=True)
        common = {"id": int, "dataset_id": int, "prompt": str, "prompt_messages": str}
        db["sft_examples"].create(
            {**common, "response": str, "split": str, "source": str, "meta": str, "created": float},
            pk="id", foreign_keys=[("dataset_id", "datasets", "id")], if_not_exists=True)
        db["sft_examples"].create_index(["dataset_id"], if_not_exists=True)
        db["pref_pairs"].create(
            {**common, "chosen": str, "rejected": str, "split": str, "source": str, "meta": str,
             "created": float},
            pk="id", foreign_keys=[("dataset_id", "datasets", "id")], if_not_exists=True)
        db["pref_pairs"].create_index(["dataset_id"], if_not_exists=True)
        db["runs"].create(
            {"id": int, "stage": str, "name": str, "status": str, "config": str, "parents": str,
             "model": str, "dataset": str, "created": float, "started": float, "finished": float,
             "error": str, "pid": int, "host": str, "step": int, "total_steps": int,
             "progress": float, "message": str, "summary": str, "run_dir": str},
            pk="id", if_not_exists=True)
        db["runs"].create_index(["stage", "status"], if_not_exists=True)
        db["metrics"].create(
            {"run_id": int, "step": int, "name": str, "value": float, "time": float},
            foreign_keys=[("run_id", "runs", "id")], if_not_exists=True)
        db["metrics"].create_index(["run_id", "name", "step"], if_not_exists=True)
        db["samples"].create(
            {"id": int, "run_id": int, "step": int, "prompt": str, "response": str,
             "reward": float, "kl": float, "extra": str, "time": float},
            pk="id", foreign_keys=[("run_id", "runs", "id")], if_not_exists=True)
        db["samples"].create_index(["run_id", "step"], if_not_exists=True)
        db["artifacts"].create(
            {"id": int, "run_id": int, "kind": str, "path": str, "sha256": str, "created": float},
            pk="id", foreign_keys=[("run_id", "runs", "id")], if_not_exists=True)
        db["logs"].create(
            {"id": int, "run_id": int, "time": float, "level": str, "message": str},
            pk="id", foreign_keys=[("run_id", "runs", "id")], if_not_exists=True)
        db["logs"].create_index(["run_id"], if_not_exists=True)
        db["votes"].create(
            {"id": int, "comparison_id": int, "prompt": str, "model_a": str, "model_b": str,
             "response_a": str, "response_b": str, "choice": str, "reward_a": float,
             "reward_b": float, "created": float},
            pk="id", if_not_exists=True)
        db["comparisons"].create(
            {"id": int, "name": str, "config": str, "run_id": int, "created": float},
            pk="id", if_not_exists=True)
        db["comparison_outputs"].create(
            {"id": int, "comparison_id": int, "prompt_index": int, "prompt": str, "model": str,
             "response": str, "reward": float, "kl": float, "length": int, "extra": str},
            pk="id", foreign_keys=[("comparison_id", "comparisons", "id")], if_not_exists=True)
        db["comparison_outputs"].create_index(["comparison_id"], if_not_exists=True)

    @staticmethod
    def _add_v2(db: sqlite_utils.Database) -> None:
        """Runs know more of their attempts: when the run was (last) queued, when this
        attempt was claimed (`started` is the first start, kept across resumes), the step and
        time of this attempt's first step report (the pace of the ETA), and a cancel asked."""
        have = set(db["runs"].columns_dict)
        for name, kind in (("enqueued", float), ("claimed", float), ("attempt_step", int),
                           ("attempt_time", float), ("cancel_requested", float)):
            if name not in have:
                db["runs"].add_column(name, kind)

    @staticmethod
    def _add_v4(db: sqlite_utils.Database) -> None:
        """The time of a run's latest step report (the ETA counts down from it) and the
        seconds its earlier attempts ran (a resumed run's duration leaves out its pauses)."""
        have = set(db["runs"].columns_dict)
        for name in ("step_time", "earlier_seconds"):
            if name not in have:
                db["runs"].add_column(name, float)

    @staticmethod
    def _add_v5(db: sqlite_utils.Database) -> None:
        """Capability answers of a comparison (issue 24): each model's greedy answer to each
        question of the set, its references and whether it matched."""
        db["capability_answers"].create(
            {"id": int, "comparison_id": int, "model": str, "source": str, "question_id": str,
             "lang": str, "prompt": str, "refs": str, "answer": str, "correct": int},
            pk="id", foreign_keys=[("comparison_id", "comparisons", "id")], if_not_exists=True)
        db["capability_answers"].create_index(["comparison_id"], if_not_exists=True)

    @staticmethod
    def _add_v3(db: sqlite_utils.Database) -> None:
        """Run groups (a sweep or an experiment recipe: one orchestrating run, its child
        runs tagged with `group_id` and the plan's `group_key`) and constitutions (named,
        versioned lists of principles for AI feedback)."""
        db["run_groups"].create(
            {"id": int, "name": str, "stage": str, "recipe": str, "config": str,
             "status": str, "run_id": int, "created": float, "summary": str},
            pk="id", if_not_exists=True)
        have = set(db["runs"].columns_dict)
        for name, kind in (("group_id", int), ("group_key", str)):
            if name not in have:
                db["runs"].add_column(name, kind)
        db["runs"].create_index(["group_id"], if_not_exists=True)
        db["constitutions"].create(
            {"id": int, "name": str, "version": int, "language": str, "description": str,
             "principles": str, "created": float},
            pk="id", not_null={"name", "version"}, if_not_exists=True)
        db["constitutions"].create_index(["name", "version"], unique=True, if_not_exists=True)

    def schema_version(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    # -- settings of this database (the `meta` key/value table, there since version 1) --
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str, only_if_absent: bool = False) -> bool:
        """Store `value` under `key`; with only_if_absent=True an existing value is kept.
        Returns whether this call wrote it (one writer wins when several race)."""
        if key == "schema_version":
            raise ValueError("meta key 'schema_version' is kept by the migrations")
        verb = "INSERT OR IGNORE" if only_if_absent else "INSERT OR REPLACE"
        with self._write():
            cur = self.db.execute(f"{verb} INTO meta (key, value) VALUES (?, ?)", [key, str(value)])
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
            table = self.db["datasets"]
            table.insert({"name": name, "kind": kind, "description": description,
                          "eval_fraction": eval_fraction, "created": _now(), "meta": "{}"})
            return table.last_pk

    def _dataset_row(self, name_or_id: str | int) -> dict | None:
        if isinstance(name_or_id, int) or (isinstance(name_or_id, str) and name_or_id.isdigit()
                                           and self._by_name(name_or_id) is None):
            rows = list(self.db["datasets"].rows_where("id = ?", [int(name_or_id)]))
        else:
            rows = [r for r in [self._by_name(str(name_or_id))] if r]
        return rows[0] if rows else None

    def _by_name(self, name: str) -> dict | None:
        rows = list(self.db["datasets"].rows_where("name = ?", [name]))
        return rows[0] if rows else None

    def get_dataset(self, name_or_id: str | int) -> dict:
        row = self._dataset_row(name_or_id)
        if row is None:
            raise NotFound(f"dataset {name_or_id!r} does not exist")
        row["meta"] = _loads(row["meta"], {})
        table = "sft_examples" if row["kind"] == "sft" else "pref_pairs"
        row["rows"] = self.db.execute(
            f"SELECT COUNT(*) FROM {table} WHERE dataset_id = ?", [row["id"]]).fetchone()[0]
        return row

    def list_datasets(self, kind: str | None = None) -> list[dict]:
        out = []
        for row in self.db["datasets"].rows_where(
                "kind = ?" if kind else None, [kind] if kind else [], order_by="name"):
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
            self.db["datasets"].update(row["id"], fields)

    def delete_dataset(self, name_or_id: str | int) -> None:
        row = self.get_dataset(name_or_id)
        with self._write():
            self._delete_dataset_rows(row["id"])

    def _delete_dataset_rows(self, dataset_id: int) -> None:
        self.db.execute("DELETE FROM sft_examples WHERE dataset_id = ?", [dataset_id])
        self.db.execute("DELETE FROM pref_pairs WHERE dataset_id = ?", [dataset_id])
        self.db.execute("DELETE FROM datasets WHERE id = ?", [dataset_id])

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
            self.db[table].insert_all(records, batch_size=500)
        return len(records)

    def list_rows(self, name_or_id: str | int, split: str | None = None,
                  limit: int | None = None, offset: int = 0) -> list[dict]:
        ds = self.get_dataset(name_or_id)
        where, args = "dataset_id = ?", [ds["id"]]
        if split:
            where += " AND split = ?"
            args.append(split)
        rows = self.db[self._rows_table(ds)].rows_where(
            where, args, order_by="id", limit=limit, offset=offset or None)
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
            self.db[self._rows_table(ds)].update(row_id, fields)

    def delete_rows(self, name_or_id: str | int, row_ids: Iterable[int]) -> int:
        ds = self.get_dataset(name_or_id)
        ids = [int(i) for i in row_ids]
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._write():
            cur = self.db.execute(
                f"DELETE FROM {self._rows_table(ds)} WHERE dataset_id = ? AND id IN ({marks})",
                [ds["id"], *ids])
        return cur.rowcount

    def set_splits(self, name_or_id: str | int, eval_ids: Iterable[int]) -> None:
        """Rows whose id is in `eval_ids` go to 'eval', every other row to 'train' (one write)."""
        ds = self.get_dataset(name_or_id)
        table, ids = self._rows_table(ds), sorted({int(i) for i in eval_ids})
        with self._write():
            self.db.execute(f"UPDATE {table} SET split = 'train' WHERE dataset_id = ?", [ds["id"]])
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                self.db.execute(f"UPDATE {table} SET split = 'eval' WHERE dataset_id = ? AND id IN "
                                f"({','.join('?' * len(chunk))})", [ds["id"], *chunk])

    def move_rows(self, from_dataset: str | int, to_dataset: str | int) -> int:
        """Move every row of one dataset into another of the same kind, then drop the first,
        in one transaction (an import staged aside lands whole or not at all)."""
        src, dst = self.get_dataset(from_dataset), self.get_dataset(to_dataset)
        if src["kind"] != dst["kind"]:
            raise ValueError(f"dataset {dst['name']!r} holds {dst['kind']} rows, "
                             f"not {src['kind']} rows")
        with self._write():
            cur = self.db.execute(f"UPDATE {self._rows_table(src)} SET dataset_id = ? "
                                  f"WHERE dataset_id = ?", [dst["id"], src["id"]])
            self.db.execute("DELETE FROM datasets WHERE id = ?", [src["id"]])
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
            self.db.execute("UPDATE datasets SET name = ? WHERE id = ?", [name, new["id"]])

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
            table = self.db[table_name]
            table.insert(row)
            row_id = table.last_pk
            if not row.get("name"):
                table.update(row_id, {"name": f"{prefix}-{row_id}"})
        return row_id

    def _row(self, table_name: str, row_id: int, what: str) -> dict:
        rows = list(self.db[table_name].rows_where("id = ?", [int(row_id)]))
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
        rows = self.db["runs"].rows_where(" AND ".join(where) or None, args,
                                          order_by="id DESC", limit=limit)
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
            self.db[table_name].update(int(row_id), fields)

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
                self.db.execute(f"DELETE FROM {table} WHERE run_id = ?", [int(run_id)])
            self.db.execute("DELETE FROM runs WHERE id = ?", [int(run_id)])

    def delete_after_step(self, run_id: int, step: int) -> None:
        """Drop a run's metrics and samples logged after `step` (a resume from the
        checkpoint of `step` redoes those steps; this keeps the curves single-valued)."""
        with self._write():
            for table in ("metrics", "samples"):
                self.db.execute(f"DELETE FROM {table} WHERE run_id = ? AND step > ?",
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
        for group_id, status, n in self.db.execute(
                "SELECT group_id, status, COUNT(*) FROM runs WHERE group_id IS NOT NULL "
                "GROUP BY group_id, status"):
            counts.setdefault(group_id, {})[status] = n
        out = []
        for row in self.db["run_groups"].rows_where(order_by="id DESC", limit=limit):
            group = _decode_group(row)
            group["counts"] = counts.get(group["id"], {})
            out.append(group)
        return out

    def update_group(self, group_id: int, **fields: Any) -> None:
        self._update("run_groups", group_id, fields, ("config", "summary"), "group")

    def group_runs(self, group_id: int) -> list[dict]:
        """The runs of a group, in the order they were created (deleted ones are gone)."""
        rows = self.db["runs"].rows_where("group_id = ?", [int(group_id)], order_by="id")
        return [_decode_run(r) for r in rows]

    def delete_group(self, group_id: int) -> None:
        """Forget a group; its runs stay (untagged), like any run."""
        with self._write():
            self.db.execute("UPDATE runs SET group_id = NULL, group_key = NULL "
                            "WHERE group_id = ?", [int(group_id)])
            self.db.execute("DELETE FROM run_groups WHERE id = ?", [int(group_id)])

    # -- metrics, samples, logs, artifacts -----------------------------------------
    def log_metrics(self, run_id: int, step: int, values: dict[str, float]) -> None:
        t = _now()
        rows = [{"run_id": int(run_id), "step": int(step), "name": k, "value": float(v), "time": t}
                for k, v in values.items() if v is not None]
        with self._write():
            self.db["metrics"].insert_all(rows)

    def get_metrics(self, run_id: int, names: Iterable[str] | None = None) -> list[dict]:
        where, args = "run_id = ?", [int(run_id)]
        if names:
            names = list(names)
            where += f" AND name IN ({','.join('?' * len(names))})"
            args.extend(names)
        return list(self.db["metrics"].rows_where(where, args, order_by="step, rowid",
                                                  select="step, name, value, time"))

    def metric_names(self, run_id: int) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT name FROM metrics WHERE run_id = ? ORDER BY name", [int(run_id)])]

    def last_metrics(self, run_id: int) -> dict[str, float]:
        """The latest value of each metric of a run."""
        rows = self.db.execute(
            "SELECT name, value FROM metrics WHERE rowid IN "
            "(SELECT MAX(rowid) FROM metrics WHERE run_id = ? GROUP BY name)", [int(run_id)])
        return {name: value for name, value in rows}

    def runs_overview(self, stage: str | None = None,
                      status: str | Iterable[str] | None = None) -> list[dict]:
        """list_runs(), each run with `last_metrics` ({name: latest value}) and `n_metrics`
        (rows stored), from one aggregate query over all runs instead of one per run."""
        runs = self.list_runs(stage=stage, status=status)
        last: dict[int, dict[str, float]] = {}
        for run_id, name, value in self.db.execute(
                "SELECT run_id, name, value FROM metrics WHERE rowid IN "
                "(SELECT MAX(rowid) FROM metrics GROUP BY run_id, name)"):
            last.setdefault(run_id, {})[name] = value
        counts = dict(self.db.execute("SELECT run_id, COUNT(*) FROM metrics GROUP BY run_id"))
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
            self.db["samples"].insert_all(recs)

    def get_samples(self, run_id: int, step: int | None = None) -> list[dict]:
        where, args = "run_id = ?", [int(run_id)]
        if step is not None:
            where += " AND step = ?"
            args.append(int(step))
        rows = []
        for r in self.db["samples"].rows_where(where, args, order_by="step, id"):
            r["extra"] = _loads(r["extra"], {})
            rows.append(r)
        return rows

    def log(self, run_id: int, message: str, level: str = "info") -> None:
        with self._write():
            self.db["logs"].insert({"run_id": int(run_id), "time": _now(), "level": level,
                                    "message": message})

    def get_log(self, run_id: int, limit: int | None = None) -> list[dict]:
        return list(self.db["logs"].rows_where("run_id = ?", [int(run_id)], order_by="id",
                                               limit=limit))

    def add_artifact(self, run_id: int, kind: str, path: str | os.PathLike,
                     sha256: str | None = None) -> int:
        with self._write():
            table = self.db["artifacts"]
            table.insert({"run_id": int(run_id), "kind": kind, "path": str(path),
                          "sha256": sha256, "created": _now()})
            return table.last_pk

    def list_artifacts(self, run_id: int, kind: str | None = None) -> list[dict]:
        where, args = "run_id = ?", [int(run_id)]
        if kind:
            where += " AND kind = ?"
            args.append(kind)
        return list(self.db["artifacts"].rows_where(where, args, order_by="id"))

    # -- comparisons and votes -----------------------------------------------------
    def create_comparison(self, name: str, config: dict, run_id: int | None = None) -> int:
        with self._write():
            table = self.db["comparisons"]
            table.insert({"name": name, "config": _dumps(config), "run_id": run_id,
                          "created": _now()})
            return table.last_pk

    def list_comparisons(self) -> list[dict]:
        out = []
        for r in self.db["comparisons"].rows_where(order_by="id DESC"):
            r["config"] = _loads(r["config"], {})
            out.append(r)
        return out

    def get_comparison(self, comparison_id: int) -> dict:
        rows = list(self.db["comparisons"].rows_where("id = ?", [int(comparison_id)]))
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
            self.db["comparison_outputs"].insert_all(recs)

    def get_comparison_outputs(self, comparison_id: int) -> list[dict]:
        rows = []
        for r in self.db["comparison_outputs"].rows_where(
                "comparison_id = ?", [int(comparison_id)], order_by="prompt_index, id"):
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
            self.db["capability_answers"].insert_all(recs)

    def get_capability_answers(self, comparison_id: int) -> list[dict]:
        rows = []
        for r in self.db["capability_answers"].rows_where(
                "comparison_id = ?", [int(comparison_id)], order_by="id"):
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
            table = self.db["votes"]
            table.insert({"comparison_id": comparison_id, "prompt": prompt, "model_a": model_a,
                          "model_b": model_b, "response_a": response_a,
                          "response_b": response_b, "choice": choice, "reward_a": reward_a,
                          "reward_b": reward_b, "created": _now()})
            return table.last_pk

    def list_votes(self, comparison_id: int | None = None) -> list[dict]:
        if comparison_id is None:
            return list(self.db["votes"].rows_where(order_by="id"))
        return list(self.db["votes"].rows_where("comparison_id = ?", [int(comparison_id)],
                                                order_by="id"))


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
        # sqlite-utils may already have committed inside (it wraps writes in `with conn`)
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
