"""Importing a file into the store: rows read and validated as a stream, staged in a hidden
dataset in batches, and landed whole or not at all; a report of every rejected row.

A staged import never replaces an existing dataset unless asked to (append, a new name,
or overwrite).
"""
from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from engine.data.formats import FORMATS, detect_format, detect_kind, normalise
from engine.data.readers import ItemNo, iter_file, plain_name, sniff_file_type
from engine.data.records import BATCH_SIZE, DEFAULT_MAX_CHARS, KINDS, RowError
from storage import DatasetExists, NotFound, Store
from storage.db import _default_split

MODES = ("new", "append", "overwrite")
TEMP_PREFIX = "~import-"

Progress = Callable[[float, int], None]  # (fraction of the file read, rows read so far)


@dataclass
class ImportReport:
    dataset: str
    kind: str | None = None
    format: str | None = None
    file_type: str | None = None
    mode: str = "new"
    imported: int = 0
    read: int = 0
    rejected: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def reject(self, line: int, error: RowError) -> None:
        """Record a rejected row under "line" (or "item", for an ItemNo) with its reason."""
        where = "item" if isinstance(line, ItemNo) else "line"
        self.rejected.append({where: int(line), "reason": error.reason, "code": error.code,
                              **error.params})

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "kind": self.kind, "format": self.format,
                "file_type": self.file_type, "mode": self.mode, "read": self.read,
                "imported": self.imported, "rejected": self.rejected,
                "seconds": round(self.seconds, 3)}


def read_records(source: Any, kind: str | None = None, fmt: str = "auto",
                 filename: str | None = None, max_chars: int = DEFAULT_MAX_CHARS,
                 report: ImportReport | None = None) -> Iterator[tuple[int, dict, float]]:
    """Valid internal records of a file, as (line, record, fraction read); every rejected
    row is added to `report`. With fmt="auto" (or kind=None) the format (kind) is taken
    from the first row that shows one, and then held for the whole file."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    report = report if report is not None else ImportReport("")
    pending: list[tuple[int, Any, float]] = []  # rows read before the format was known
    chosen = None if fmt == "auto" else fmt

    def handle(line: int, raw: Any, frac: float):
        report.read += 1
        if isinstance(raw, RowError):
            report.reject(line, raw)
            return None
        try:
            return line, normalise(raw, report.kind, chosen, max_chars), frac
        except RowError as exc:
            report.reject(line, exc)
            return None

    report.kind, report.format = kind, chosen
    for line, raw, frac in iter_file(source, filename):
        if report.kind is None or chosen is None:
            if isinstance(raw, dict) and detect_format(raw):
                if chosen is None:
                    chosen = report.format = detect_format(raw)
                if report.kind is None:
                    report.kind = detect_kind(raw)
            else:
                pending.append((line, raw, frac))
                continue
            for item in pending:
                out = handle(*item)
                if out:
                    yield out
            pending = []
        out = handle(line, raw, frac)
        if out:
            yield out
    for line, raw, _ in pending:  # no row showed a format
        report.read += 1
        report.reject(line, raw if isinstance(raw, RowError) else
                      RowError("unknown_format", "no known fields (prompt, chosen, messages, "
                               "instruction, conversations...)"))


# -- importing into the store ----------------------------------------------------------
def default_name(filename: str | None) -> str:
    stem = Path(plain_name(filename) or "dataset").stem
    return re.sub(r"[^\w\-. ]+", "-", stem).strip(" -.") or "dataset"


def import_file(store: Store, source: Any, kind: str | None = None, fmt: str = "auto",
                dataset: str | None = None, *, mode: str = "new", filename: str | None = None,
                max_chars: int = DEFAULT_MAX_CHARS, eval_fraction: float | None = None,
                description: str = "", progress: Progress | None = None,
                batch_size: int = BATCH_SIZE) -> ImportReport:
    """Import a file (path, bytes or file object) into dataset `dataset`.

    mode "new" refuses an existing name (DatasetExists, before anything is read);
    "append" adds to it (same kind); "overwrite" replaces it. Rows are staged in a hidden
    dataset and land in one transaction at the end, so a failed import (or one with no
    valid row) leaves the store exactly as it was.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    t0 = time.perf_counter()
    name_hint = filename or (str(source) if isinstance(source, (str, os.PathLike))
                             else getattr(source, "name", None))
    name = (dataset or default_name(name_hint)).strip()
    existing = _maybe_dataset(store, name)
    if existing is not None and mode == "new":
        raise DatasetExists(f"dataset {name!r} already exists: append to it, choose another "
                            f"name, or overwrite it")
    if existing is not None and mode == "append":
        if kind is not None and kind != existing["kind"]:
            raise ValueError(f"dataset {name!r} holds {existing['kind']} rows, not {kind} rows")
        kind = existing["kind"]
        fraction = existing["eval_fraction"] if eval_fraction is None else eval_fraction
        base = existing["rows"]
    else:
        fraction, base = 0.1 if eval_fraction is None else eval_fraction, 0
    report = ImportReport(name, kind=kind, mode=mode)
    fh_name = filename or name_hint
    temp = None
    batch: list[dict] = []

    def flush():
        nonlocal temp, batch
        if not batch:
            return
        if temp is None:
            temp = f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}"
            store.create_dataset(temp, report.kind, description=description,
                                 eval_fraction=fraction)
        store.add_rows(temp, batch, source=Path(fh_name or "").name)
        batch = []

    try:
        report.file_type = sniff_file_type(source, fh_name)
        for _line, rec, frac in read_records(source, kind, fmt, fh_name, max_chars, report):
            rec.setdefault("split", _default_split(base + report.imported, fraction))
            batch.append(rec)
            report.imported += 1
            if len(batch) >= batch_size:
                flush()
                if progress:
                    progress(min(1.0, frac), report.read)
        flush()
        if temp is not None:
            meta = {"imported_from": Path(fh_name or "").name, "format": report.format,
                    "file_type": report.file_type}
            _land(store, temp, name, mode, existing is not None, meta)
            temp = None
    finally:
        if temp is not None:  # failed midway: the staged rows go, the target is untouched
            try:
                store.delete_dataset(temp)
            except NotFound:
                pass
    if progress:
        progress(1.0, report.read)
    report.seconds = time.perf_counter() - t0
    return report


def _land(store: Store, temp: str, name: str, mode: str, existed: bool, meta: dict) -> None:
    if mode == "append" and existed:
        store.move_rows(temp, name)
        return
    store.update_dataset(temp, meta=meta)
    try:  # a new name is checked in the landing transaction itself: two imports may race
        store.replace_dataset(name, temp, overwrite=mode == "overwrite")
    except DatasetExists as exc:
        raise DatasetExists(f"dataset {name!r} already exists: another import created it while "
                            f"this file was read, and nothing of this file was stored (append "
                            f"to it, choose another name, or overwrite it)") from exc


def _maybe_dataset(store: Store, name: str) -> dict | None:
    try:
        ds = store.get_dataset(name)
    except NotFound:
        return None
    return ds if ds["name"] == name else None


def cleanup_staged(store: Store, older_than_s: float = 3600) -> int:
    """Drop staging datasets left by an import that was killed (older than an hour)."""
    n = 0
    for ds in store.list_datasets():
        if ds["name"].startswith(TEMP_PREFIX) and time.time() - (ds["created"] or 0) > older_than_s:
            store.delete_dataset(ds["id"])
            n += 1
    return n


def list_datasets(store: Store, kind: str | None = None) -> list[dict]:
    """Datasets, without imports being staged."""
    return [d for d in store.list_datasets(kind) if not d["name"].startswith(TEMP_PREFIX)]
