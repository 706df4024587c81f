"""AI–human agreement: do the judge's preference labels match people's on the same pairs?

**Matching.** An AI label and a human label belong to the same pair when they have the same
prompt and the same two answers, in either order (texts compared with runs of white space
made one space and the ends stripped; a chat prompt by its turns). Every label is written
against the pair's canonical order (its two answers sorted), as "first", "second" or "tie".

**Human labels** come from
(a) votes cast in the app's preference collection (engine.data.collect): the rows they
    added to any preference dataset (source "pair_sample#<run>", meta.origin "human"),
    and their "tie" / "both bad" votes, kept on the pair_sample runs;
(b) the blind A/B votes of the Compare page (storage table `votes`: prompt, response_a,
    response_b, choice a / b / tie / both_bad);
(c) optionally a reference preference dataset's own chosen/rejected (its non-AI rows): the
    case of an AI job that judged that dataset's pairs (the AI rows' meta.input_row is the
    id of the judged row, which matches even where the texts were changed since).
A "both bad" vote counts as a tie. Several labels of one pair on one side are merged by
majority: the answer preferred strictly more often, else a tie.

**AI labels**: the rows of an AI-labelled preference dataset (source class "ai",
engine.data.sources): chosen is preferred, or a tie when the row says so (meta.label
"tie", or meta.tie true: the two orders of the question disagreed and the job kept it).

**Ties**: by default (`ties="category"`) a tie is a third label of Cohen's κ, so a tie on
one side and a preference on the other is a disagreement; `ties="drop"` leaves out every
pair that has a tie on either side (counted in `ties_dropped`), so κ compares preferences
only.

**κ and its interval**: κ = (p_o − p_e) / (1 − p_e) over the labels' contingency table
(engine.objectives.cohen_kappa). Its 95% interval holds for small n: Wilson's score interval
of the observed agreement p_o (engine.objectives.wilson_interval) carried to κ through the
same formula with p_e held at its observed value (engine.objectives.kappa_interval). 4
pairs out of 4 in agreement give p_o in [0.51, 1], so with p_e = 0.5 κ is somewhere in
[0.02, 1]: not the zero-width interval Cohen's large-sample SE gives there (SE = 0 at
p_o = 1; `se` is still reported, for large n). No randomness: the same labels always give
the same interval. κ is None when p_e = 1 (both sides always give the same single label:
agreement beyond chance is undefined).

**Position bias**: a compare job asks its judge twice, the two answers in both orders; the
rows it stores say whether the two orders picked the same answer (meta.order_agreement) and
P(first answer better) asked each way (meta.p_first, meta.p_second). Where the two orders
disagree on most of the matched pairs (`position_bias`), the judge's labels follow the place
an answer was shown in, not the answer: its agreement with people is chance, however high,
and the document says so (`position["driven"]`).
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from engine.data.curation import iter_rows
from engine.data.sources import source_class
from engine.objectives import (cohen_kappa, kappa_interval, kappa_standard_error,
                               wilson_interval)

LABELS = ("first", "second", "tie")
TIES = ("category", "drop")
Z95 = 1.959963984540054
TIE_VOTES = ("tie", "both_bad")
POSITION_DRIVEN = 0.5   # the judge's two orders disagree on more than this share of pairs


# -- pairs and labels ------------------------------------------------------------------
def _text(value: Any) -> str:
    return re.sub(r"\s+", " ", str(value or "")).strip()


def _prompt_key(prompt: Any) -> str:
    if isinstance(prompt, list):
        turns = [[str(m.get("role")), _text(m.get("content"))] for m in prompt
                 if isinstance(m, dict)]
        return json.dumps(turns, ensure_ascii=False)
    return _text(prompt)


def pair_key(prompt: Any, answer_1: str, answer_2: str) -> tuple[str, str, str]:
    """(prompt, answer, answer) with the two answers in canonical (sorted) order: the same
    key for both orders of one pair."""
    a, b = sorted((_text(answer_1), _text(answer_2)))
    return _prompt_key(prompt), a, b


def oriented(prompt: Any, preferred: str, other: str, tie: bool = False
             ) -> tuple[tuple[str, str, str], str]:
    """(pair key, label): which of the key's two answers is preferred, or "tie"."""
    key = pair_key(prompt, preferred, other)
    if tie:
        return key, "tie"
    return key, "first" if _text(preferred) == key[1] else "second"


@dataclass
class Label:
    """One rater's label of one pair (key from `pair_key`)."""
    key: tuple[str, str, str]
    label: str                      # first | second | tie
    origin: str                     # ai | vote | tie_vote | ab_vote | reference
    prompt: Any = None
    ref: dict = field(default_factory=dict)   # where it came from: row, run or vote ids
    # an AI label of a compare job: did the judge's two orders (A/B, B/A) pick the same
    # answer, and which place it preferred each way ("first" / "second" shown, None: unknown)
    orders_agree: bool | None = None
    shown: tuple = ()


def _row_tie(meta: dict) -> bool:
    return meta.get("label") == "tie" or meta.get("tie") is True


def ai_labels(store, dataset: str | int) -> list[Label]:
    """The AI labels of a preference dataset: its rows of source class "ai"."""
    ds = store.get_dataset(dataset)
    out = []
    for row in iter_rows(store, ds["id"]):
        if source_class(row) != "ai":
            continue
        meta = row.get("meta") or {}
        key, label = oriented(row["prompt"], row["chosen"], row["rejected"], _row_tie(meta))
        ref = {"dataset": ds["name"], "row": row["id"]}
        if meta.get("input_row") is not None:
            ref["input_row"] = meta.get("input_row")
            ref["input_dataset"] = meta.get("input_dataset") or meta.get("prompts")
        out.append(Label(key, label, "ai", row["prompt"], ref, *_orders(meta)))
    return out


def _orders(meta: dict) -> tuple[bool | None, tuple]:
    """(did the two orders agree, the place preferred asked each way) of an AI row's meta.
    p_first: P(answer x better) asked x first; p_second: the same asked x second."""
    agree = meta.get("order_agreement")
    p1, p2 = meta.get("p_first"), meta.get("p_second")
    shown: tuple = ()
    if isinstance(p1, (int, float)) and isinstance(p2, (int, float)):
        shown = ("first" if p1 > 0.5 else "second" if p1 < 0.5 else "tie",
                 "second" if p2 > 0.5 else "first" if p2 < 0.5 else "tie")
    return (agree if isinstance(agree, bool) else None), shown


def position_bias(labels: Iterable[Label]) -> dict:
    """How far position decided the AI labels: {judged (labels whose two orders are known),
    orders_disagree, first_shown / second_shown (labels where the answer shown first, or
    second, won both ways), share (orders_disagree / judged), driven (share above
    POSITION_DRIVEN: the labels follow the order the answers were shown in)}."""
    known = [a for a in labels if a.orders_agree is not None]
    disagree = sum(not a.orders_agree for a in known)
    share = disagree / len(known) if known else None
    return {"judged": len(known), "orders_disagree": disagree,
            "first_shown": sum(a.shown == ("first", "first") for a in known),
            "second_shown": sum(a.shown == ("second", "second") for a in known),
            "share": share, "driven": share is not None and share > POSITION_DRIVEN}


def vote_labels(store) -> list[Label]:
    """(a) the app's preference votes: rows with a person's vote in every preference
    dataset, and the tie / both-bad votes of pair_sample runs."""
    out: list[Label] = []
    seen_runs: set = set()
    for ds in store.list_datasets(kind="preference"):
        for row in iter_rows(store, ds["id"]):
            if source_class(row) != "human":
                continue
            meta = row.get("meta") or {}
            key, label = oriented(row["prompt"], row["chosen"], row["rejected"])
            run = meta.get("pair_sample_run")
            if run is not None:
                seen_runs.add(run)
            out.append(Label(key, label, "vote", row["prompt"],
                             {"dataset": ds["name"], "row": row["id"], "run": run}))
    from engine.data.collect import get_pair  # the pair_sample runs' own answers

    for run in store.list_runs(stage="pair_sample", status="succeeded"):
        vote = (run["summary"] or {}).get("vote")
        if vote not in TIE_VOTES or run["id"] in seen_runs:
            continue
        pair = get_pair(store, run["id"])
        if pair["a"] is None or pair["b"] is None:
            continue
        key, label = oriented(pair["prompt"], pair["a"], pair["b"], tie=True)
        out.append(Label(key, label, "tie_vote", pair["prompt"], {"run": run["id"],
                                                                 "vote": vote}))
    return out


def ab_vote_labels(store) -> list[Label]:
    """(b) the blind A/B votes (storage `votes`)."""
    out = []
    for v in store.list_votes():
        if v.get("choice") not in ("a", "b", *TIE_VOTES):
            continue
        a, b = v.get("response_a") or "", v.get("response_b") or ""
        if _text(a) == _text(b):
            continue
        preferred, other = (a, b) if v["choice"] == "a" else (b, a)
        key, label = oriented(v["prompt"], preferred, other, tie=v["choice"] in TIE_VOTES)
        out.append(Label(key, label, "ab_vote", v["prompt"], {"vote": v["id"],
                                                              "choice": v["choice"]}))
    return out


def reference_labels(store, dataset: str | int) -> list[Label]:
    """(c) a preference dataset's own chosen/rejected (its rows not made by AI)."""
    ds = store.get_dataset(dataset)
    out = []
    for row in iter_rows(store, ds["id"]):
        if source_class(row) == "ai":
            continue
        key, label = oriented(row["prompt"], row["chosen"], row["rejected"])
        out.append(Label(key, label, "reference", row["prompt"],
                         {"dataset": ds["name"], "row": row["id"]}))
    return out


def human_labels(store, votes: bool = True, ab_votes: bool = True,
                 reference: str | int | None = None) -> list[Label]:
    """Every human label of the kinds asked for (see the module's docstring)."""
    out: list[Label] = []
    if votes:
        out += vote_labels(store)
    if ab_votes:
        out += ab_vote_labels(store)
    if reference is not None:
        out += reference_labels(store, reference)
    return out


def majority(labels: Iterable[str]) -> str:
    """The label of several: the answer preferred strictly more often, else "tie"."""
    counts = Counter(labels)
    if counts["first"] > counts["second"]:
        return "first"
    if counts["second"] > counts["first"]:
        return "second"
    return "tie"


# -- Cohen's kappa --------------------------------------------------------------------------
def kappa(pairs: list[tuple[str, str]], categories: Iterable[str] = LABELS) -> dict:
    """Cohen's κ of (rater 1, rater 2) label pairs: {n, agree, percent, p_o, p_e, kappa, se
    (Cohen's large-sample SE), ci_low, ci_high (the small-n interval of the module's
    docstring), table} (table[i][j]: pairs rater 1 labelled categories[i] and rater 2
    categories[j]). Nothing to compare (n = 0): the statistics are None."""
    cats = list(categories)
    index = {c: i for i, c in enumerate(cats)}
    table = [[0] * len(cats) for _ in cats]
    for x, y in pairs:
        table[index[x]][index[y]] += 1
    n = len(pairs)
    out: dict[str, Any] = {"n": n, "categories": cats, "table": table}
    if not n:
        return {**out, "agree": 0, "percent": None, "p_o": None, "p_e": None, "kappa": None,
                "se": None, "ci_low": None, "ci_high": None}
    agree = sum(table[i][i] for i in range(len(cats)))
    p_o = agree / n
    rows = [sum(r) / n for r in table]
    cols = [sum(table[i][j] for i in range(len(cats))) / n for j in range(len(cats))]
    p_e = sum(r * c for r, c in zip(rows, cols))
    k = cohen_kappa(p_o, p_e)
    se = kappa_standard_error(p_o, p_e, n)
    low = high = None
    if k is not None:
        interval = kappa_interval(*wilson_interval(agree, n, Z95), p_e)
        if interval is not None:
            low, high = interval
    return {**out, "agree": agree, "percent": 100.0 * p_o, "p_o": p_o, "p_e": p_e,
            "kappa": k, "se": se, "ci_low": low, "ci_high": high}


# -- the whole comparison -------------------------------------------------------------
def _answers(key: tuple[str, str, str], label: str) -> str:
    return {"first": key[1], "second": key[2]}.get(label, "")


def _reoriented(a: Label, key: tuple[str, str, str]) -> Label | None:
    """An AI label moved onto the (edited) pair `key` of the row it judged: the answer it
    preferred, or the other one, is still one of the pair's; None when both were edited."""
    if a.label == "tie":
        return replace(a, key=key)
    winner = _answers(a.key, a.label)
    loser = _answers(a.key, "second" if a.label == "first" else "first")
    if winner in key[1:]:
        label = "first" if winner == key[1] else "second"
    elif loser in key[1:]:
        label = "second" if loser == key[1] else "first"
    else:
        return None
    return replace(a, key=key, label=label)


def compare_labels(ai: list[Label], human: list[Label], ties: str = "category") -> dict:
    """AI against human labels, matched by pair: κ (see `kappa`) plus {ai_pairs,
    human_pairs, matched, ties_dropped, disagreements, position} (position: `position_bias`
    of the AI labels of the matched pairs) where each disagreement is {prompt,
    first, second, ai, human, ai_preferred, human_preferred, ai_refs, human_refs}."""
    if ties not in TIES:
        raise ValueError(f"ties={ties!r}: expected one of {', '.join(TIES)}")
    by_ref: dict[tuple, tuple] = {}
    for h in human:  # (c): a judged reference row is found by its id too
        if h.origin == "reference":
            by_ref[(h.ref.get("dataset"), h.ref.get("row"))] = h.key
    ai_by: dict[tuple, list[Label]] = defaultdict(list)
    for a in ai:
        key = a.key
        ref_key = by_ref.get((a.ref.get("input_dataset"), a.ref.get("input_row")))
        if ref_key is not None and ref_key != key:
            a = _reoriented(a, ref_key)  # the judged row was edited since
            if a is None:
                continue
        ai_by[a.key].append(a)
    human_by: dict[tuple, list[Label]] = defaultdict(list)
    for h in human:
        human_by[h.key].append(h)
    matched, dropped, disagreements = [], 0, []
    matched_ai: list[Label] = []
    for key, ai_list in ai_by.items():
        if key not in human_by:
            continue
        x = majority(a.label for a in ai_list)
        y = majority(h.label for h in human_by[key])
        if ties == "drop" and "tie" in (x, y):
            dropped += 1
            continue
        matched.append((x, y))
        matched_ai.extend(ai_list)
        if x != y:
            disagreements.append({
                "prompt": ai_list[0].prompt, "first": key[1], "second": key[2],
                "ai": x, "human": y, "ai_preferred": _answers(key, x),
                "human_preferred": _answers(key, y),
                "ai_refs": [a.ref for a in ai_list],
                "human_refs": [dict(h.ref, origin=h.origin) for h in human_by[key]]})
    categories = LABELS if ties == "category" else LABELS[:2]
    out = kappa(matched, categories)
    out.update(ai_pairs=len(ai_by), human_pairs=len(human_by), matched=len(matched),
               ties=ties, ties_dropped=dropped, disagreements=disagreements,
               position=position_bias(matched_ai))
    return out


def agreement(store, dataset: str | int, reference: str | int | None = None,
              votes: bool = True, ab_votes: bool = True, ties: str = "category") -> dict:
    """AI–human agreement on the AI-labelled pairs of `dataset` where people labelled the
    same pairs (the sources in the module's docstring; `reference`: a preference dataset
    whose own pairs count as human labels). Returns `compare_labels`' document with the
    dataset's name."""
    ds = store.get_dataset(dataset)
    ai = ai_labels(store, ds["id"])
    human = human_labels(store, votes=votes, ab_votes=ab_votes, reference=reference)
    return {"dataset": ds["name"], "reference": reference,
            **compare_labels(ai, human, ties=ties)}
