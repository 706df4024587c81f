"""The `constitutions` table (schema v3): named, versioned lists of principles for AI
feedback. The only SQL about constitutions; engine.feedback.constitutions validates and
ships the samples on top of these functions."""
from __future__ import annotations

import json

from storage.db import NotFound, Store, _now


def _decode(row: dict) -> dict:
    row = dict(row)
    row["principles"] = json.loads(row.get("principles") or "[]")
    row["description"] = row.get("description") or ""
    row["language"] = row.get("language") or "en"
    return row


def latest(store: Store, name: str) -> dict | None:
    """The latest version of constitution `name`, or None."""
    rows = store._select("constitutions", "name = ?", [name], order_by="version DESC", limit=1)
    return _decode(rows[0]) if rows else None


def get(store: Store, name: str, version: int | None = None) -> dict:
    """One version of a constitution (the latest when `version` is None); NotFound names it."""
    if version is None:
        row = latest(store, name)
    else:
        rows = store._select("constitutions", "name = ? AND version = ?", [name, int(version)])
        row = _decode(rows[0]) if rows else None
    if row is None:
        what = f"constitution {name!r}" + ("" if version is None else f" version {version}")
        raise NotFound(f"{what} does not exist")
    return row


def list_latest(store: Store) -> list[dict]:
    """The latest version of every constitution, by name."""
    rows = store._select(
        "constitutions", "version = (SELECT MAX(c2.version) FROM constitutions c2 "
        "WHERE c2.name = constitutions.name)", order_by="name")
    return [_decode(r) for r in rows]


def versions(store: Store, name: str) -> list[dict]:
    """Every version of a constitution, oldest first."""
    return [_decode(r) for r in store._select("constitutions", "name = ?", [name],
                                              order_by="version")]


def insert_version(store: Store, name: str, principles: list[str], language: str,
                   description: str) -> int:
    """Store a new version (1 + the latest) when the principles differ from the latest
    version's, and return its number; with the same principles the latest version is kept
    (its language and description updated in place) and its number returned. One
    transaction: two writers never take the same version."""
    with store._write():
        current = latest(store, name)
        if current is not None and current["principles"] == list(principles):
            if (current["language"], current["description"]) != (language, description):
                store._set("constitutions", current["id"],
                           {"language": language, "description": description}, "constitution")
            return current["version"]
        version = 1 + (current["version"] if current else 0)
        store._insert("constitutions", {
            "name": name, "version": version, "language": language, "description": description,
            "principles": json.dumps(list(principles), ensure_ascii=False), "created": _now()})
    return version


def delete(store: Store, name: str) -> int:
    """Delete every version of a constitution; returns the rows deleted."""
    with store._write():
        cur = store.conn.execute("DELETE FROM constitutions WHERE name = ?", [name])
    return cur.rowcount
