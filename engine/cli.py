"""The two helpers every `python -m engine` command uses (engine/__main__.py and the
`register_cli` functions of engine.data.commands, engine.export and the others)."""
from __future__ import annotations

import json
from typing import Any


def store_of(args):
    """The Store of `--db PATH`, or the default database (the shipped samples loaded into
    it the first time it is opened: engine.data.ensure_samples_on_first_open)."""
    from engine.data import ensure_samples_on_first_open
    from storage import Store

    store = Store(getattr(args, "db", None) or None)
    ensure_samples_on_first_open(store)
    return store


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
