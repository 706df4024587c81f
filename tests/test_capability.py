"""Capability retention on Compare (issue 24): the matching rule on hand-worked answers
in English and French, the shipped question file, the accuracy with its interval and the
verdict against the base, `python -m engine compare` on the tiny model, and the page."""
from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from engine.capability import (capability_summary, first_sentence, is_correct, load_questions,
                               normalize, retention_sentence, shipped_questions)
from engine.objectives import capability_accuracy, retention_verdict
from tests.conftest import ROOT


# -- the matching rule, by hand --------------------------------------------------------------
@pytest.mark.parametrize("answer, refs, expected", [
    ("The capital of France is Paris.", ["Paris"], True),
    ("Paris", ["Paris"], True),
    ("Parisian food is famous.", ["Paris"], False),             # whole words only
    ("It is London. Paris is in France.", ["Paris"], False),    # only the first sentence
    ("Answer:\nParis", ["Paris"], False),                       # ... of the first line
    ("There are twenty-four hours in a day.", ["24"], True),    # number words as digits
    ("The answer is 120.", ["12"], False),                      # 120 is not 12
    ("It is the blue whale.", ["blue whale"], True),            # articles dropped
    ("It is a whale.", ["blue whale"], False),                  # the whole reference
    ("Pi is 3.14 roughly", ["3.14"], True),                     # a decimal point is no end
])
def test_matching_rule_english(answer, refs, expected):
    assert is_correct(answer, refs) is expected


@pytest.mark.parametrize("answer, refs, expected", [
    ("La capitale de la Belgique est Bruxelles.", ["Bruxelles"], True),
    ("Les Bruxellois sont nombreux.", ["Bruxelles"], False),
    ("Nous respirons de l'oxygene.", ["oxygène"], True),        # accents and l' go
    ("C'est la Havane !", ["La Havane"], True),
    ("Il y en a dix-huit.", ["18"], True),
    ("Vingt et un.", ["21"], True),
    ("Il y en a vingt-huit.", ["8"], False),                    # 28, not 8
    ("Sept ! Non, huit.", ["8"], False),                        # first sentence: "Sept"
])
def test_matching_rule_french(answer, refs, expected):
    assert is_correct(answer, refs) is expected


def test_normalize_and_first_sentence_by_hand():
    assert normalize("L'Œuvre de Zola, c'est « Germinal » !") == "oeuvre de zola c est germinal"
    assert normalize("The Forty-Two answers") == "42 answers"
    assert normalize("Un chat et une souris") == "chat et souris"   # un/une: articles
    assert first_sentence("\n  Yes. No.") == "Yes"
    assert first_sentence("e.g.Paris? maybe") == "e.g.Paris"
    assert not is_correct("the", ["The"])   # a reference that is only an article


# -- the shipped questions ---------------------------------------------------------------------
def test_shipped_question_file_is_valid():
    rows = load_questions()
    assert len(rows) >= 100
    by_lang = {lang: [r for r in rows if r["lang"] == lang] for lang in ("en", "fr")}
    assert len(by_lang["en"]) >= 50 and len(by_lang["fr"]) >= 50
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        refs = [r["answer"], *r["aliases"]]
        assert all(normalize(x) for x in refs), r["id"]
        # no reference inside its own question: repeating the question never scores
        assert not any(is_correct(r["question"], [x]) for x in refs), r["id"]
        # the reference answers its question under the rule
        assert is_correct(f"{r['answer']}.", refs)
    small = shipped_questions(5)
    assert [q["lang"] for q in small] == ["en"] * 3 + ["fr"] * 2
    assert small[0]["prompt"].startswith(rows[0]["question"])


def test_a_bad_question_file_names_line_and_field(tmp_path):
    good = {"id": "x-1", "lang": "en", "question": "Q?", "answer": "A", "aliases": []}
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "x-2", "answer": " "}))
    with pytest.raises(ValueError, match="line 2: field 'answer'"):
        load_questions(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good))
    with pytest.raises(ValueError, match="line 2: id 'x-1' is used twice"):
        load_questions(path)


def test_an_sft_dataset_as_the_question_set(store):
    from engine.capability import questions_for
    from engine.data import ensure_sample_datasets
    from storage import NotFound

    ensure_sample_datasets(store)
    completions = {r["prompt"]: r["response"] for r in store.list_rows("sample-sft",
                                                                       split="eval")}
    questions = questions_for(store, "sample-sft", "eval", limit=3, seed=0)
    assert len(questions) == 3
    for q in questions:   # the prompt as it is, the completion's first sentence the reference
        assert q["references"] == [first_sentence(completions[q["prompt"]])]
        assert is_correct(completions[q["prompt"]], q["references"])
    with pytest.raises(ValueError, match="'sample-preferences' is a preference dataset"):
        questions_for(store, "sample-preferences", "eval")
    with pytest.raises(NotFound, match="nope"):
        questions_for(store, "nope")


# -- accuracy, interval, verdict -----------------------------------------------------------------
def _rows(model: str, correct: int, n: int = 10) -> list[dict]:
    return [{"model": model, "question_id": f"q{i}", "lang": "en" if i % 2 else "fr",
             "prompt": f"question {i}", "references": [f"r{i}"],
             "answer": f"r{i}" if i < correct else "no", "correct": i < correct}
            for i in range(n)]


def test_accuracy_interval_and_verdict_by_hand():
    assert capability_accuracy([True, False, True, True]) == 0.75
    assert capability_accuracy([]) is None
    assert retention_verdict(0.1, 0.3, 0.5, 0.9) == "lower"
    assert retention_verdict(0.6, 0.95, 0.2, 0.5) == "higher"
    assert retention_verdict(0.4, 0.6, 0.5, 0.9) == "same"
    # 8/10 vs 2/10: Wilson 0.490–0.943 and 0.057–0.510 overlap: no cost is claimed
    cap = capability_summary(_rows("base", 8) + _rows("ppo#2", 2))
    base, ppo = cap
    assert (base["n"], base["correct"], base["accuracy"]) == (10, 8, 0.8)
    assert (round(base["low"], 4), round(base["high"], 4)) == (0.4902, 0.9433)
    assert (round(ppo["low"], 4), round(ppo["high"], 4)) == (0.0567, 0.5098)
    assert base["by_lang"]["en"]["n"] == 5 and base["by_lang"]["fr"]["correct"] == 4
    assert retention_sentence(cap)["key"] == "compare.cap_same"
    # 9/10 vs 1/10: 0.596–0.982 and 0.018–0.404: lower beyond the intervals
    cap = capability_summary(_rows("base", 9) + _rows("ppo#2", 1) + _rows("sft#1", 8))
    sentence = retention_sentence(cap)
    assert sentence["key"] == "compare.cap_lower"
    assert sentence["params"]["lower"] == "ppo#2" and sentence["params"]["base"] == "90%"
    assert retention_sentence(capability_summary(_rows("sft#1", 3))) is None   # no base


# -- headless ------------------------------------------------------------------------------------
def test_cli_prints_one_json_document_with_capability(store, tiny_model_dir, capsys):
    from engine.__main__ import main
    from engine.data import ensure_sample_datasets
    from engine.inference.models import inference_cache

    ensure_sample_datasets(store)
    db = ["--db", str(store.path)]
    assert main(db + ["compare", "--sources", "base,99", "--prompts", "sample-sft"]) == 2
    assert "source 99" in capsys.readouterr().err
    assert main(db + ["compare", "--sources", "base", "--prompts", "nope"]) == 2
    assert "dataset 'nope' does not exist" in capsys.readouterr().err
    assert store.list_runs(stage="compare") == []          # nothing ran
    inference_cache.clear()
    code = main(db + ["compare", "--sources", "base", "--prompts", "sample-sft",
                      "--set", f"model={json.dumps(str(tiny_model_dir))}",
                      "--set", "num_prompts=2", "--set", "max_new_tokens=4",
                      "--set", "capability_limit=4", "--set", "capability_max_new_tokens=4"])
    out = json.loads(capsys.readouterr().out)   # one JSON document, nothing else
    assert code == 0, out
    assert out["status"] == "succeeded" and out["prompts"] == 2
    assert out["capability"]["set"] == "shipped" and out["capability"]["questions"] == 4
    (base,) = out["models"]
    assert base["model"] == "base" and base["mean_kl"] == 0.0
    assert {"mean_reward", "mean_length", "distinct_1", "distinct_2"} <= set(base)
    cap = base["capability"]
    assert cap["n"] == 4 and {"en", "fr"} == set(cap["by_lang"])
    assert 0.0 <= cap["low"] <= cap["high"] <= 1.0
    stored = store.get_capability_answers(out["comparison_id"])
    assert len(stored) == 4 and cap["correct"] == sum(r["correct"] for r in stored)
    assert all(r["correct"] == is_correct(r["answer"], r["references"]) for r in stored)
    inference_cache.clear()


def test_capability_answers_survive_a_restart_and_an_old_database_gains_the_table(lab_home):
    from storage import Store

    path = lab_home / "old.db"
    old = Store(path)
    old.db["capability_answers"].drop()            # a version-4 database, as users have it
    old.db["meta"].upsert({"key": "schema_version", "value": "4"}, pk="key")
    old.close()
    store = Store(path)
    cid = store.create_comparison("c", {})
    store.add_capability_answers(cid, _rows("base", 3, n=4))
    store.close()
    rows = Store(path).get_capability_answers(cid)
    assert [(r["question_id"], r["correct"], r["references"]) for r in rows] == [
        ("q0", True, ["r0"]), ("q1", True, ["r1"]), ("q2", True, ["r2"]), ("q3", False, ["r3"])]


# -- the page ------------------------------------------------------------------------------------
def _stored_comparison(store) -> int:
    cid = store.create_comparison("cap", {"prompts": ["q0"], "capability": "shipped",
                                          "labels": {"base": "base", "2": "ppo#2"}})
    store.add_comparison_outputs(cid, [
        {"prompt_index": 0, "prompt": "q0", "model": m, "response": f"{m} says hi",
         "reward": r, "kl": 0.0, "length": 3} for m, r in (("base", 0.5), ("ppo#2", 1.5))])
    store.add_capability_answers(cid, _rows("base", 9) + _rows("ppo#2", 1))
    store.add_vote("q0", "ppo#2", "base", "ppo#2 says hi", "base says hi", "a",
                   comparison_id=cid)
    return cid


@pytest.mark.parametrize("lang, lower, interval", [
    ("en", "Lower than the base model (90% of 10 questions)", "60% – 98%"),
    ("fr", "Plus bas que le modèle de base (90% sur 10 questions)", "60% – 98%"),
])
def test_compare_page_shows_accuracy_with_interval(store, lang, lower, interval):
    import streamlit as st

    _stored_comparison(store)
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "views" / "compare.py"), default_timeout=60)
    at.session_state["lang"] = lang
    at.run()
    assert not at.exception, at.exception
    from ui.i18n import t

    table = next(d.value for d in at.dataframe
                 if t("compare.cap_col_interval", lang=lang) in d.value.columns)
    rows = table.to_dict("records")
    assert [list(r.values())[:4] for r in rows] == [
        ["base", "90%", interval, "9 " + ("of" if lang == "en" else "sur") + " 10"],
        ["ppo#2", "10%", "2% – 40%", "1 " + ("of" if lang == "en" else "sur") + " 10"]]
    text = " ".join(str(v) for v in rows[1].values())
    assert "100%" in text and "1.5" in text           # the blind A/B win rate and reward
    sentence = " ".join(m.value for m in at.markdown)
    assert lower in sentence and "ppo#2" in sentence
