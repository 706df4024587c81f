"""Where each pair came from, and the share of AI-labelled pairs a training run uses.

Every row keeps a ``source`` (text) and a ``meta`` (object). The classes read from them:

- ``ai``: made by an AI-feedback job (source "ai", or meta.origin "ai");
- ``human``: a person's vote in the app (source "pair_sample#<run>", or meta.origin "human");
- ``sample``: imported from one of the shipped sample files;
- ``imported``: imported from any other file (source: the file's name);
- ``edited``: added in the page's table editor (source "editor");
- ``unknown``: no source recorded (rows added by code without one).

``mix_sources`` is the source mix of reward and DPO training (their ``ai_share`` setting).
No Streamlit and no torch here.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Callable, Iterable, Iterator

from engine.data.curation import SAMPLES, iter_rows
from engine.schema import ConfigError

CLASSES = ("human", "ai", "imported", "sample", "edited", "unknown")
AI_SOURCE = "ai"
SAMPLE_FILES = frozenset(filename for _, filename in SAMPLES.values())


def source_class(row: dict) -> str:
    """The class (one of CLASSES) of a row from its `source` and `meta`."""
    source = str(row.get("source") or "").strip()
    meta = row.get("meta") or {}
    origin = meta.get("origin") if isinstance(meta, dict) else None
    if source == AI_SOURCE or source.startswith(AI_SOURCE + "#") or origin == "ai":
        return "ai"
    if source.startswith("pair_sample#") or origin == "human":
        return "human"
    if source == "editor":
        return "edited"
    if source in SAMPLE_FILES:
        return "sample"
    return "imported" if source else "unknown"


def pair_sources(store, dataset: str | int, split: str | None = None) -> dict[str, int]:
    """{class: rows} of a dataset (SFT or preference), the classes present in CLASSES order."""
    counts = Counter(source_class(row) for row in iter_rows(store, dataset, split))
    return {c: counts[c] for c in CLASSES if counts[c]}


def _classes(classes: str | Iterable[str]) -> set[str]:
    wanted = {classes} if isinstance(classes, str) else set(classes)
    unknown = wanted - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown source class {sorted(unknown)[0]!r}; known: "
                         f"{', '.join(CLASSES)}")
    return wanted


def rows_by_source(store, dataset: str | int, classes: str | Iterable[str],
                   split: str | None = None) -> Iterator[dict]:
    """The rows of `dataset` (in order, one `split` or all) whose class is in `classes`."""
    wanted = _classes(classes)
    return (row for row in iter_rows(store, dataset, split) if source_class(row) in wanted)


def filter_rows(rows: Iterable[dict], classes: str | Iterable[str]) -> list[dict]:
    """The rows (already read) whose class is in `classes`."""
    wanted = _classes(classes)
    return [row for row in rows if source_class(row) in wanted]


def is_tie(row: dict) -> bool:
    """A pair whose AI label is a tie (no preferred answer)."""
    meta = row.get("meta")
    return isinstance(meta, dict) and bool(meta.get("tie"))


def mix_sources(rows: list[dict], ai_share: float | None, seed: int, dataset: str = "",
                log: Callable[[str], None] | None = None,
                field: str = "ai_share") -> list[dict]:
    """The training rows with a share `ai_share` of AI-labelled pairs.

    None: every row as it is. A share s in [0, 1]: the AI rows (class "ai") and the others
    are kept in the proportion s : 1 − s with as many rows as that allows, n = min(A / s,
    H / (1 − s)) for A AI rows and H others; the side with rows to spare is subsampled at
    random with `seed` (the run's seed: the same seed keeps the same rows), and the kept
    rows stay in their order. s = 0 keeps only the others, s = 1 only the AI rows. A share
    that needs a kind the rows lack is a ConfigError naming `field`.

    Pairs an AI judge kept as ties (`meta.tie`: its two orders disagreed and the job's
    `order_disagreement` was "tie") say nothing about which answer is better: they are left
    out of training whatever the share."""
    ties = [row for row in rows if is_tie(row)]
    if ties:
        rows = [row for row in rows if not is_tie(row)]
        if log is not None:
            log(f"{len(ties)} pair(s) the AI judge left as ties are not trained on")
    if ai_share is None:
        return rows
    share = float(ai_share)
    if not 0.0 <= share <= 1.0:
        raise ConfigError(field, f"{share:g} is not a share between 0 and 1")
    ai = [i for i, row in enumerate(rows) if source_class(row) == "ai"]
    other = [i for i, row in enumerate(rows) if source_class(row) != "ai"]
    name = f"dataset {dataset!r}" if dataset else "the dataset"
    if share > 0 and not ai:
        raise ConfigError(field, f"{name} has no AI-labelled training pairs (source 'ai'); "
                                 f"a share of {share:g} needs some (leave it empty to use "
                                 f"every pair)")
    if share < 1 and not other:
        raise ConfigError(field, f"{name} has only AI-labelled training pairs; a share of "
                                 f"{share:g} needs pairs of other sources (human votes, "
                                 f"imported) too")
    if share == 0.0:
        n_ai, n_other = 0, len(other)
    elif share == 1.0:
        n_ai, n_other = len(ai), 0
    else:
        total = min(len(ai) / share, len(other) / (1.0 - share))
        n_ai = min(len(ai), max(1, round(share * total)))
        n_other = min(len(other), max(1, round((1.0 - share) * total)))
    rng = random.Random(seed)
    keep = set(ai if n_ai == len(ai) else rng.sample(ai, n_ai))
    keep |= set(other if n_other == len(other) else rng.sample(other, n_other))
    out = [row for i, row in enumerate(rows) if i in keep]
    if log is not None:
        log(f"source mix: {n_ai} AI-labelled and {n_other} other training pairs "
            f"(ai_share {share:g}; {len(ai)} and {len(other)} available)")
    return out
