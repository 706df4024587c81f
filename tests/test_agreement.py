"""AI–human agreement (engine.feedback.agreement): Cohen's κ and its interval worked out by
hand, pairs matched across the order of their answers, ties as a label or left out, and
every source of human labels (app votes, blind A/B votes, a reference dataset)."""
from __future__ import annotations

import math

import pytest

from engine.feedback import agreement as A
from engine.objectives import LATEX, cohen_kappa, kappa_standard_error


def table_pairs(cells: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    return [pair for pair, n in cells.items() for _ in range(n)]


def test_textbook_kappa_and_interval():
    # the classic 2x2 example (50 items; yes/yes 20, yes/no 5, no/yes 10, no/no 15):
    # p_o = 35/50 = 0.7; rater 1 says yes 25/50, rater 2 30/50:
    # p_e = 0.5·0.6 + 0.5·0.4 = 0.5; κ = (0.7 − 0.5)/(1 − 0.5) = 0.4
    # SE = sqrt(0.7·0.3 / (50·0.5²)) = sqrt(0.0168) = 0.129615; CI = 0.4 ± 1.96·SE
    res = A.kappa(table_pairs({("first", "first"): 20, ("first", "second"): 5,
                               ("second", "first"): 10, ("second", "second"): 15}))
    assert res["n"] == 50 and res["agree"] == 35
    assert res["percent"] == pytest.approx(70.0)
    assert res["p_e"] == pytest.approx(0.5)
    assert res["kappa"] == pytest.approx(0.4)
    assert res["se"] == pytest.approx(math.sqrt(0.0168))
    # the interval (issue 25): Wilson's for p_o = 35/50, z² = 3.841459: centre
    # (0.7 + 0.038415) / 1.076829 = 0.685726, half 1.820126 · sqrt(0.0042 + 0.000384) =
    # 0.123234, so p_o in [0.562492, 0.808960]; κ = 2·p_o − 1 (p_e = 0.5) at each end
    assert res["ci_low"] == pytest.approx(0.124984, abs=1e-4)
    assert res["ci_high"] == pytest.approx(0.617920, abs=1e-4)
    assert res["table"] == [[20, 5, 0], [10, 15, 0], [0, 0, 0]]
    assert "kappa" in LATEX["cohen_kappa"] and "SE" in LATEX["kappa_standard_error"]


def test_three_labels_by_hand():
    # rows: rater 1 (AI), columns: rater 2 (human); n = 10
    #            first second tie
    #   first      4     1    0
    #   second     0     3    1
    #   tie        1     0    0
    # p_o = 7/10; rows 0.5 0.4 0.1, cols 0.5 0.4 0.1: p_e = 0.25 + 0.16 + 0.01 = 0.42
    # κ = (0.7 − 0.42) / 0.58 = 0.482759
    res = A.kappa(table_pairs({("first", "first"): 4, ("first", "second"): 1,
                               ("second", "second"): 3, ("second", "tie"): 1,
                               ("tie", "first"): 1}))
    assert res["p_e"] == pytest.approx(0.42)
    assert res["kappa"] == pytest.approx(0.28 / 0.58)
    assert res["se"] == pytest.approx(math.sqrt(0.21 / (10 * 0.58 ** 2)))


def test_kappa_edges():
    perfect = A.kappa([("first", "first"), ("second", "second")] * 5)
    assert perfect["kappa"] == pytest.approx(1.0) and perfect["se"] == pytest.approx(0.0)
    # 10 of 10: Wilson's low end 10 / (10 + 3.841459) = 0.722467, κ = 2·0.722467 − 1
    assert (perfect["ci_low"], perfect["ci_high"]) == (pytest.approx(0.444934, abs=1e-5),
                                                       pytest.approx(1.0))
    opposite = A.kappa([("first", "second"), ("second", "first")] * 5)
    assert opposite["kappa"] == pytest.approx(-1.0) and opposite["ci_low"] == -1.0
    same = A.kappa([("first", "first")] * 4)   # p_e = 1: agreement beyond chance undefined
    assert same["percent"] == 100.0 and same["kappa"] is None and same["ci_low"] is None
    assert A.kappa([])["kappa"] is None and A.kappa([])["n"] == 0
    assert cohen_kappa(0.5, 1.0) is None and kappa_standard_error(0.5, 0.2, 0) is None


def test_pairs_match_in_either_order_and_white_space():
    k1, l1 = A.oriented("Why is the sky blue?", "Rayleigh scattering.", "Because.")
    k2, l2 = A.oriented("Why is the sky blue? ", "Because.", " Rayleigh  scattering.")
    assert k1 == k2 and l1 != l2                 # same pair, opposite preference
    k3, l3 = A.oriented("Why is the sky blue?", "Because.", "Rayleigh scattering.", tie=True)
    assert k3 == k1 and l3 == "tie"
    chat = [{"role": "user", "content": "Hi"}]
    assert A.pair_key(chat, "a", "b") != A.pair_key("Hi", "a", "b")
    assert A.majority(["first", "second", "first"]) == "first"
    assert A.majority(["first", "second"]) == "tie" and A.majority(["tie", "second"]) == "second"


# -- on a store ---------------------------------------------------------------------------
PROMPTS = [f"Question {i}?" for i in range(6)]
GOOD = [f"A careful answer to question {i}." for i in range(6)]
BAD = [f"No idea {i}." for i in range(6)]


def ai_dataset(store, name="ai-prefs", flip=(), tie=()):
    """AI rows: GOOD preferred, except at the indices in `flip`; `tie`: kept as ties."""
    store.create_dataset(name, "preference")
    rows = []
    for i, p in enumerate(PROMPTS):
        chosen, rejected = (BAD[i], GOOD[i]) if i in flip else (GOOD[i], BAD[i])
        meta = {"constitution": "helpful-safe-en", "mode": "compare",
                **({"label": "tie", "order_agreement": False} if i in tie else {})}
        rows.append({"prompt": p, "chosen": chosen, "rejected": rejected, "meta": meta})
    store.add_rows(name, rows, source="ai")


def human_vote(store, i, prefer_good=True, dataset="human-preferences"):
    """A row as the app's vote collection stores it (engine.data.collect.record_vote)."""
    if dataset not in {d["name"] for d in store.list_datasets()}:
        store.create_dataset(dataset, "preference")
    chosen, rejected = (GOOD[i], BAD[i]) if prefer_good else (BAD[i], GOOD[i])
    store.add_rows(dataset, [{"prompt": PROMPTS[i], "chosen": chosen, "rejected": rejected,
                              "meta": {"origin": "human", "choice": "b",
                                       "pair_sample_run": 100 + i}}],
                   source=f"pair_sample#{100 + i}")


def test_agreement_from_app_votes_and_ab_votes(store):
    ai_dataset(store, flip={3})
    human_vote(store, 0)                              # agrees
    human_vote(store, 1, prefer_good=False)           # disagrees
    # blind A/B votes with the answers the other way round (B is GOOD)
    store.add_vote(PROMPTS[2], "m1", "m2", BAD[2], GOOD[2], "b")   # agrees
    store.add_vote(PROMPTS[3], "m1", "m2", BAD[3], GOOD[3], "b")   # AI flipped: disagrees
    store.add_vote(PROMPTS[4], "m1", "m2", BAD[4], GOOD[4], "tie")  # a tie: disagrees
    store.add_vote("an unrelated prompt", "m1", "m2", "x", "y", "a")  # matches nothing
    res = A.agreement(store, "ai-prefs")
    assert res["ai_pairs"] == 6 and res["matched"] == 5 and res["n"] == 5
    assert res["agree"] == 2 and res["percent"] == pytest.approx(40.0)
    # GOOD sorts before BAD ("A careful…" < "No idea…"), so preferring GOOD is "first".
    # (AI, human): (first, first) ×2 [0, 2], (first, second) [1], (second, first) [3],
    # (first, tie) [4]. Rows AI, columns human (first, second, tie):
    #   first   2 1 1      p_o = 2/5 = 0.4
    #   second  1 0 0      AI (0.8, 0.2, 0), human (0.6, 0.2, 0.2):
    #   tie     0 0 0      p_e = 0.48 + 0.04 + 0 = 0.52; κ = (0.4 − 0.52)/0.48 = −0.25
    assert res["table"] == [[2, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert res["p_e"] == pytest.approx(0.52)
    assert res["kappa"] == pytest.approx(-0.25)
    by_prompt = {d["prompt"]: d for d in res["disagreements"]}
    assert set(by_prompt) == {PROMPTS[1], PROMPTS[3], PROMPTS[4]}
    d1 = by_prompt[PROMPTS[1]]
    assert d1["ai_preferred"] == GOOD[1] and d1["human_preferred"] == BAD[1]
    assert d1["human_refs"][0]["origin"] == "vote" and d1["ai_refs"][0]["dataset"] == "ai-prefs"
    assert by_prompt[PROMPTS[3]]["ai_preferred"] == BAD[3]
    assert by_prompt[PROMPTS[4]]["human"] == "tie"
    assert by_prompt[PROMPTS[4]]["human_refs"][0] == {"vote": 3, "choice": "tie",
                                                      "origin": "ab_vote"}
    # only the app's votes, or only the A/B votes
    assert A.agreement(store, "ai-prefs", ab_votes=False)["matched"] == 2
    assert A.agreement(store, "ai-prefs", votes=False)["matched"] == 3


def test_ties_count_as_a_label_or_are_dropped(store):
    ai_dataset(store, tie={0})
    for i in range(4):
        human_vote(store, i)
    store.add_vote(PROMPTS[5], "m1", "m2", GOOD[5], BAD[5], "both_bad")  # a human tie
    as_label = A.agreement(store, "ai-prefs")
    assert as_label["matched"] == 5 and as_label["agree"] == 3
    assert as_label["categories"] == ["first", "second", "tie"]
    dropped = A.agreement(store, "ai-prefs", ties="drop")
    assert dropped["matched"] == 3 and dropped["ties_dropped"] == 2
    assert dropped["agree"] == 3 and dropped["categories"] == ["first", "second"]
    with pytest.raises(ValueError, match="ties"):
        A.agreement(store, "ai-prefs", ties="maybe")


def test_tie_votes_kept_on_pair_sample_runs_count(store):
    """A 'tie' vote in the app adds no row: the pair_sample run keeps it (and its answers)."""
    ai_dataset(store)
    run = store.create_run("pair_sample", {"prompt": PROMPTS[2], "source": "base"},
                           status="succeeded")
    store.add_samples(run, 0, [{"prompt": PROMPTS[2], "response": BAD[2], "label": "A"},
                               {"prompt": PROMPTS[2], "response": GOOD[2], "label": "B"}])
    store.update_run(run, summary={"vote": "tie", "dataset": "human-preferences"})
    res = A.agreement(store, "ai-prefs")
    assert res["matched"] == 1 and res["agree"] == 0
    assert res["disagreements"][0]["human"] == "tie"
    assert res["disagreements"][0]["human_refs"][0]["run"] == run


def test_several_votes_on_one_pair_by_majority(store):
    ai_dataset(store)
    human_vote(store, 0)
    human_vote(store, 0)
    store.add_vote(PROMPTS[0], "m1", "m2", BAD[0], GOOD[0], "a")   # one against two
    res = A.agreement(store, "ai-prefs")
    assert res["matched"] == 1 and res["agree"] == 1 and not res["disagreements"]


def test_reference_dataset_and_judged_rows(store):
    """(c) an AI job judged a preference dataset's own pairs: its chosen/rejected are the
    human labels, found by content or, once a row's text was edited, by meta.input_row."""
    store.create_dataset("gold", "preference")
    store.add_rows("gold", [{"prompt": p, "chosen": GOOD[i], "rejected": BAD[i]}
                            for i, p in enumerate(PROMPTS[:3])], source="gold.jsonl")
    gold = store.list_rows("gold")
    store.create_dataset("judged", "preference")
    store.add_rows("judged", [
        {"prompt": PROMPTS[0], "chosen": BAD[0], "rejected": GOOD[0],     # disagrees
         "meta": {"input_row": gold[0]["id"], "input_dataset": "gold"}},
        {"prompt": PROMPTS[1], "chosen": GOOD[1], "rejected": BAD[1],     # agrees
         "meta": {"input_row": gold[1]["id"], "input_dataset": "gold"}},
        {"prompt": PROMPTS[2], "chosen": GOOD[2], "rejected": BAD[2],     # agrees, via id
         "meta": {"input_row": gold[2]["id"], "input_dataset": "gold"}}], source="ai")
    store.update_row("gold", gold[2]["id"], {"chosen": GOOD[2] + " (edited)"})
    assert A.agreement(store, "judged")["matched"] == 0        # no votes anywhere
    res = A.agreement(store, "judged", reference="gold")
    assert res["matched"] == 3 and res["agree"] == 2
    assert [d["prompt"] for d in res["disagreements"]] == [PROMPTS[0]]
    # the AI rows of a dataset never count as its human labels
    assert A.agreement(store, "judged", reference="judged")["matched"] == 0


def test_cli_sources_and_agreement(store, capsys):
    import json

    from engine.__main__ import main

    ai_dataset(store, flip={1})
    human_vote(store, 0)
    human_vote(store, 1)
    db = ["--db", str(store.path)]
    assert main([*db, "data", "sources", "ai-prefs"]) == 0
    assert json.loads(capsys.readouterr().out)["sources"] == {"ai": 6}
    assert main([*db, "data", "agreement", "ai-prefs", "--ties", "drop"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["matched"] == 2 and out["agree"] == 1 and out["percent"] == 50.0
    assert out["disagreements"][0]["prompt"] == PROMPTS[1]
    assert main([*db, "data", "agreement", "ai-prefs", "--no-votes"]) == 0
    assert json.loads(capsys.readouterr().out)["matched"] == 0
