"""What a run records: metrics, samples, logs and artifacts."""
from __future__ import annotations

import os
from typing import Iterable

from storage.base import (_dumps, _loads, _now, split_prompt)


class RunRecords:
    """What a run records: metrics, samples, logs and artifacts.

    A part of storage.db.Store: it reads and writes through the Store's row helpers
    (_select, _insert, _set, _write) and connection."""

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
