"""Constitutions: named, versioned lists of principles (Bai et al. 2022) the judge applies.

A constitution is stored in SQLite (the `constitutions` table, through
storage.constitutions); saving one with other principles makes a new version, so every
AI-made pair can name the exact version it was judged by. Four samples ship in
assets/constitutions/ (helpful and safe; concise and factual; English and French) and
are added to a database when absent (`ensure_shipped`, idempotent: a user's later
versions are kept).
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.schema import ConfigError
from storage import constitutions as db

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets" / "constitutions"
SHIPPED = ("helpful-safe-en", "helpful-safe-fr", "concise-factual-en",
           "concise-factual-fr")
DEFAULT = "helpful-safe-en"
LANGUAGES = ("en", "fr")
OFFERED_KEY = "constitutions_offered"


def shipped() -> list[dict]:
    """The shipped samples as read from assets/constitutions/ ({name, language,
    description, principles})."""
    return [json.loads((ASSETS / f"{name}.json").read_text(encoding="utf-8"))
            for name in SHIPPED]


def ensure_shipped(store) -> list[str]:
    """Add the shipped constitutions this database was never offered; returns the names
    added. Idempotent: a database remembers which samples it was offered (its `meta`
    key "constitutions_offered"), so a shipped constitution a user deleted is not given
    back, and a user's later versions are kept."""
    before = set(json.loads(store.get_meta(OFFERED_KEY) or "[]"))
    offered, added = set(before), []
    for c in shipped():
        if c["name"] in offered:
            continue
        if db.latest(store, c["name"]) is None:
            db.insert_version(store, c["name"], c["principles"], c["language"],
                              c["description"])
            added.append(c["name"])
        offered.add(c["name"])
    if offered != before:
        store.set_meta(OFFERED_KEY, json.dumps(sorted(offered)))
    return added


def _public(row: dict) -> dict:
    return {k: row[k] for k in ("name", "version", "language", "description", "principles",
                                "created")}


def list_constitutions(store) -> list[dict]:
    """The latest version of each constitution: name, version, language, description,
    principles (list of str), created. The shipped ones are added first when absent."""
    ensure_shipped(store)
    return [_public(r) for r in db.list_latest(store)]


def get_constitution(store, name: str, version: int | None = None) -> dict:
    """One version of a constitution (the latest by default); storage.NotFound names it."""
    if name in SHIPPED:
        ensure_shipped(store)
    return _public(db.get(store, name, version))


def constitution_versions(store, name: str) -> list[dict]:
    """Every stored version of a constitution, oldest first."""
    return [_public(r) for r in db.versions(store, name)]


def clean_principles(principles) -> list[str]:
    """The principles as a list of stripped, non-empty strings, or a ConfigError naming
    `principles` (an empty list, a blank principle, or something that is not text)."""
    if isinstance(principles, str):
        principles = [line for line in principles.splitlines()]
    if not isinstance(principles, (list, tuple)):
        raise ConfigError("principles", "expected a list of principles (text)")
    out = []
    for i, p in enumerate(principles, 1):
        if not isinstance(p, str):
            raise ConfigError("principles", f"principle {i} is not text: {p!r}")
        if not p.strip():
            raise ConfigError("principles", f"principle {i} is blank")
        out.append(p.strip())
    if not out:
        raise ConfigError("principles", "a constitution needs at least one principle")
    return out


def save_constitution(store, name: str, principles, language: str = "en",
                      description: str = "") -> int:
    """Save a constitution and return its version: a new version only when the principles
    changed (the same principles keep the latest version). ConfigError names `name`,
    `principles` or `language` when one cannot be used."""
    name = (name or "").strip()
    if not name:
        raise ConfigError("name", "a constitution needs a name")
    if len(name) > 80:
        raise ConfigError("name", "at most 80 characters")
    if language not in LANGUAGES:
        raise ConfigError("language", f"{language!r} is not one of {', '.join(LANGUAGES)}")
    return db.insert_version(store, name, clean_principles(principles), language,
                             (description or "").strip())


def delete_constitution(store, name: str) -> int:
    """Delete every version of a constitution (pairs already made keep its name and
    version in their meta). Returns the versions deleted."""
    return db.delete(store, name)
