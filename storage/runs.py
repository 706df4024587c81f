"""Runs, their states, and run groups (sweeps and recipes)."""
from __future__ import annotations

import os
import socket
from typing import Any, Iterable

from storage.base import (ACTIVE_STATES, NotFound, RUN_STATES, _decode_group, _decode_run, _dumps,
                          _now, owner_process)


class RunTables:
    """Runs, their states, and run groups (sweeps and recipes).

    A part of storage.db.Store: it reads and writes through the Store's row helpers
    (_select, _insert, _set, _write) and connection."""

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
