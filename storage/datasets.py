"""Datasets and their rows (SFT examples, preference pairs)."""
from __future__ import annotations

from typing import Any, Iterable

from storage.base import (DatasetExists, NotFound, _default_split, _dumps, _join_prompt, _loads,
                          _now, split_prompt)


class DatasetTables:
    """Datasets and their rows (SFT examples, preference pairs).

    A part of storage.db.Store: it reads and writes through the Store's row helpers
    (_select, _insert, _set, _write) and connection."""

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
