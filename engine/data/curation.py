"""Curating stored datasets: TRL export, table edits, re-splits, statistics, the shipped
samples, and the prompts other stages draw from a dataset."""
from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from engine.data.importer import _maybe_dataset, import_file, list_datasets
from engine.data.records import (ANSWER_FIELDS, BATCH_SIZE, DEFAULT_MAX_CHARS, RowError,
                                 messages_of, prompt_chars, validate)
from storage import DatasetExists, Store

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"
SAMPLES = {"sample-sft": ("sft", "sample_sft.jsonl"),
           "sample-preferences": ("preference", "sample_preferences.jsonl"),
           # the length-bias recipe's pairs: the chosen answer is the longer (padded) one
           "sample-preferences-longer": ("preference", "sample_preferences_longer.jsonl")}
SAMPLES_MARKER = "samples_offered"  # meta key: the samples were offered to this database


# -- export ----------------------------------------------------------------------------
def to_trl(row: dict, kind: str, extra: bool = False) -> dict:
    """An internal row in TRL format: standard for text prompts, conversational for chats."""
    prompt = row["prompt"]
    chat = isinstance(prompt, list)

    def answer(text: str) -> Any:
        return [{"role": "assistant", "content": text}] if chat else text

    if kind == "sft":
        out = {"prompt": prompt, "completion": answer(row["response"])}
    else:
        out = {"prompt": prompt, "chosen": answer(row["chosen"]),
               "rejected": answer(row["rejected"])}
    if extra:
        out["split"] = row.get("split")
        if row.get("meta"):
            out["meta"] = row["meta"]
    return out


def iter_rows(store: Store, dataset: str | int, split: str | None = None,
              page: int = BATCH_SIZE) -> Iterator[dict]:
    offset = 0
    while True:
        rows = store.list_rows(dataset, split=split, limit=page, offset=offset)
        yield from rows
        if len(rows) < page:
            return
        offset += page


def export_lines(store: Store, dataset: str | int, split: str | None = None,
                 extra: bool = False) -> Iterator[str]:
    kind = store.get_dataset(dataset)["kind"]
    for row in iter_rows(store, dataset, split):
        yield json.dumps(to_trl(row, kind, extra), ensure_ascii=False) + "\n"


def export_jsonl(store: Store, dataset: str | int, path: str | os.PathLike | None = None,
                 split: str | None = None, extra: bool = False) -> bytes | int:
    """TRL JSONL of a dataset: written to `path` (returns the row count) or returned as bytes."""
    if path is None:
        return "".join(export_lines(store, dataset, split, extra)).encode("utf-8")
    n = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for line in export_lines(store, dataset, split, extra):
            fh.write(line)
            n += 1
    return n


# -- editing, splits, statistics -------------------------------------------------------
def prompt_cell(prompt: Any) -> str:
    """A prompt as an editable cell: the text, or the message list as JSON."""
    return json.dumps(prompt, ensure_ascii=False) if isinstance(prompt, list) else prompt


def cell_prompt(text: Any) -> Any:
    """The inverse of prompt_cell: a JSON list of messages becomes a chat prompt again."""
    if isinstance(text, str) and text.strip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(value, list):
            return messages_of(value, "prompt")
    return "" if text is None else text


def save_edits(store: Store, dataset: str | int, updated: dict[int, dict] | None = None,
               added: Iterable[dict] = (), deleted: Iterable[int] = (),
               max_chars: int = DEFAULT_MAX_CHARS) -> list[dict]:
    """Apply edits from a table: {row id: changed fields}, new rows, deleted row ids.

    Every row is validated like an import; invalid ones are left as they were and
    returned as [{row, reason, code}] (row: the id, or "new N")."""
    ds = store.get_dataset(dataset)
    kind = ds["kind"]
    current = {r["id"]: r for r in iter_rows(store, ds["id"])} if updated else {}
    errors: list[dict] = []
    fields = ("prompt",) + ANSWER_FIELDS[kind] + ("split",)
    for row_id, changes in (updated or {}).items():
        row_id = int(row_id)
        if row_id not in current:
            continue
        changes = {k: v for k, v in changes.items() if k in fields}
        if "prompt" in changes:
            try:
                changes["prompt"] = cell_prompt(changes["prompt"])
            except RowError as exc:
                errors.append({"row": row_id, "reason": exc.reason, "code": exc.code})
                continue
        if changes.get("split") not in (None, "train", "eval"):
            changes.pop("split")
        merged = {**current[row_id], **changes}
        try:
            validate({k: merged.get(k) for k in ("prompt",) + ANSWER_FIELDS[kind]}, kind,
                     max_chars)
        except RowError as exc:
            errors.append({"row": row_id, "reason": exc.reason, "code": exc.code})
            continue
        if changes:
            store.update_row(ds["id"], row_id, changes)
    good = []
    for i, row in enumerate(added, start=1):
        rec = {k: row.get(k) for k in fields if row.get(k) not in (None, "")}
        try:
            if "prompt" in rec:
                rec["prompt"] = cell_prompt(rec["prompt"])
            validate(rec, kind, max_chars)
        except RowError as exc:
            errors.append({"row": f"new {i}", "reason": exc.reason, "code": exc.code})
            continue
        if rec.get("split") not in ("train", "eval"):
            rec.pop("split", None)
        good.append(rec)
    if good:
        store.add_rows(ds["id"], good, source="editor")
    deleted = [int(i) for i in deleted]
    if deleted:
        store.delete_rows(ds["id"], deleted)
    return errors


def resplit(store: Store, dataset: str | int, eval_fraction: float, seed: int = 0) -> dict:
    """Set a dataset's eval fraction and draw its eval rows again: round(n·f) rows, at
    random with `seed` (stable: the same seed gives the same split)."""
    if not 0 <= eval_fraction < 1:
        raise ValueError("eval fraction: must be at least 0 and below 1")
    ds = store.get_dataset(dataset)
    ids = [r["id"] for r in iter_rows(store, ds["id"])]
    k = round(len(ids) * eval_fraction)
    if eval_fraction > 0 and len(ids) >= 2:
        k = min(max(k, 1), len(ids) - 1)
    eval_ids = random.Random(seed).sample(ids, k) if k else []
    store.update_dataset(ds["id"], eval_fraction=float(eval_fraction))
    store.set_splits(ds["id"], eval_ids)
    return {"train": len(ids) - len(eval_ids), "eval": len(eval_ids)}


def _row_key(row: dict, kind: str) -> str:
    return json.dumps([row["prompt"]] + [row[f] for f in ANSWER_FIELDS[kind]],
                      ensure_ascii=False, sort_keys=True)


def dataset_stats(store: Store, dataset: str | int) -> dict:
    """Counts, length distributions (characters), duplicates, and (pairs) the length bias."""
    ds = store.get_dataset(dataset)
    kind = ds["kind"]
    splits: Counter = Counter()
    sources: Counter = Counter()
    lengths: dict[str, list[int]] = {"prompt": [], **{f: [] for f in ANSWER_FIELDS[kind]}}
    seen_rows, seen_prompts = set(), set()
    duplicate_ids: list[int] = []
    repeated_prompts = chat = longer = 0
    for row in iter_rows(store, ds["id"]):
        splits[row["split"]] += 1
        sources[row.get("source") or ""] += 1
        lengths["prompt"].append(prompt_chars(row["prompt"]))
        for f in ANSWER_FIELDS[kind]:
            lengths[f].append(len(row[f]))
        chat += isinstance(row["prompt"], list)
        key = _row_key(row, kind)
        if key in seen_rows:
            duplicate_ids.append(row["id"])
        seen_rows.add(key)
        pkey = json.dumps(row["prompt"], ensure_ascii=False, sort_keys=True)
        repeated_prompts += pkey in seen_prompts
        seen_prompts.add(pkey)
        if kind == "preference":
            longer += len(row["chosen"]) > len(row["rejected"])
    n = sum(splits.values())
    out = {"dataset": ds["name"], "kind": kind, "rows": n, "train": splits.get("train", 0),
           "eval": splits.get("eval", 0), "eval_fraction": ds["eval_fraction"],
           "chat_prompts": chat, "unique_prompts": len(seen_prompts),
           "repeated_prompts": repeated_prompts, "duplicates": len(duplicate_ids),
           "duplicate_ids": duplicate_ids, "lengths": lengths, "sources": dict(sources)}
    if kind == "preference":
        out["chosen_longer"] = longer / n if n else 0.0
    return out


# -- samples and prompts for other stages -------------------------------------------------
def ensure_sample_datasets(store: Store) -> list[str]:
    """Import the shipped samples (SAMPLES: "sample-sft", "sample-preferences" and the
    length-biased "sample-preferences-longer") when absent.
    Returns the names created now."""
    created = []
    for name, (kind, filename) in SAMPLES.items():
        if _maybe_dataset(store, name) is not None:
            continue
        try:
            import_file(store, ASSETS / filename, kind=kind, fmt="trl", dataset=name,
                        description="sample", eval_fraction=0.1)
            created.append(name)
        except DatasetExists:  # another page loaded it at the same moment
            pass
    return created


def ensure_samples_on_first_open(store: Store) -> list[str]:
    """Load the shipped samples the first time the app or the command line opens a database,
    and only then: a marker in the database remembers it, so samples a user deleted are not
    given back. A database that already holds datasets or runs without the marker (made
    before the marker existed) only gets the marker: its owner has set it up, perhaps
    deleting the samples; they stay one button (or `data samples`) away.
    Returns the names created now."""
    if store.get_meta(SAMPLES_MARKER) is not None:
        return []
    fresh = not list_datasets(store) and not store.list_runs(limit=1)
    if not store.set_meta(SAMPLES_MARKER, "loaded" if fresh else "not loaded: existing data",
                          only_if_absent=True):
        return []  # another process opened it at the same moment and took the marker
    return ensure_sample_datasets(store) if fresh else []


def prompts_of(store: Store, dataset: str | int, split: str | None = None,
               unique: bool = True) -> list:
    """The prompts (strings or message lists) of any dataset, SFT or preference, in order;
    with unique=True each prompt once (preference data repeats prompts)."""
    out, seen = [], set()
    for row in iter_rows(store, dataset, split):
        if unique:
            key = json.dumps(row["prompt"], ensure_ascii=False, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
        out.append(row["prompt"])
    return out
