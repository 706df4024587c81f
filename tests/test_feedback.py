"""AI feedback (issue 17): constitutions, templates, and both modes of the ai_feedback job
with the tiny model as policy and judge."""
from __future__ import annotations

import json
import threading

import pytest

from engine.feedback import constitutions as con
from engine.feedback import templates as tpl
from engine.feedback.jobs import AIFeedbackConfig, run_ai_feedback
from engine.schema import ConfigError
from storage import NotFound

META_KEYS = {"constitution", "constitution_version", "principle", "judge", "mode", "templates",
             "confidence", "order_agreement", "job_run"}


# -- constitutions --------------------------------------------------------------------------
def test_shipped_constitutions_versions_and_bad_input(store):
    assert set(con.ensure_shipped(store)) == set(con.SHIPPED)
    assert con.ensure_shipped(store) == []                       # idempotent
    listed = {c["name"]: c for c in con.list_constitutions(store)}
    assert set(listed) == {"helpful-safe-en", "helpful-safe-fr", "concise-factual-en",
                           "concise-factual-fr"}
    assert listed["helpful-safe-fr"]["language"] == "fr"
    assert all(c["version"] == 1 and len(c["principles"]) >= 3 for c in listed.values())

    # the same principles keep the version; other principles make a new one
    same = listed["concise-factual-en"]["principles"]
    assert con.save_constitution(store, "concise-factual-en", same) == 1
    assert con.save_constitution(store, "concise-factual-en", same + ["Cite a source."]) == 2
    assert con.get_constitution(store, "concise-factual-en")["principles"][-1] == "Cite a source."
    assert con.get_constitution(store, "concise-factual-en", 1)["principles"] == same
    assert [v["version"] for v in con.constitution_versions(store, "concise-factual-en")] == [1, 2]
    assert con.ensure_shipped(store) == []              # a user's version is never replaced
    assert con.get_constitution(store, "concise-factual-en")["version"] == 2

    assert con.save_constitution(store, "mine", ["  Be kind.  "], "fr", "d") == 1
    assert con.get_constitution(store, "mine") == {**con.get_constitution(store, "mine"),
                                                   "principles": ["Be kind."], "language": "fr"}
    for bad in ([], ["ok", "   "], [3], "   "):
        with pytest.raises(ConfigError) as err:
            con.save_constitution(store, "mine", bad)
        assert err.value.field == "principles"
    with pytest.raises(ConfigError) as err:
        con.save_constitution(store, " ", ["x"])
    assert err.value.field == "name"
    with pytest.raises(NotFound):
        con.get_constitution(store, "mine", 7)
    assert con.get_constitution(store, "mine")["version"] == 1   # nothing stored by bad input
    # a shipped constitution the user deleted is not given back
    assert con.delete_constitution(store, "concise-factual-fr") == 1
    assert con.ensure_shipped(store) == []
    assert "concise-factual-fr" not in {c["name"] for c in con.list_constitutions(store)}


# -- templates ------------------------------------------------------------------------------
def test_templates_name_a_missing_or_unknown_placeholder():
    for kind, text in tpl.DEFAULTS.items():
        tpl.check_template(kind, text)
        assert set(tpl.placeholders_of(text)) == set(tpl.PLACEHOLDERS[kind])
    with pytest.raises(ConfigError) as err:
        tpl.check_template("compare", "Q {prompt} A {response_a} P {principle}")
    assert err.value.field == "compare_template" and "response_b" in str(err.value)
    with pytest.raises(ConfigError) as err:
        tpl.check_template("critique", "{prompt} {response} {principle} {answer}")
    assert err.value.field == "critique_template"
    assert "unknown placeholder {answer}" in str(err.value)
    with pytest.raises(ConfigError) as err:
        tpl.check_template("revision", "{prompt} {response} {principle} {critique")
    assert err.value.field == "revision_template"
    # literal braces are written doubled
    tpl.check_template("critique", "{{json}} {prompt} {response} {principle}")
    assert tpl.fill("critique", "{{x}} {prompt}|{response}|{principle}", prompt="p",
                    response="r", principle="q") == "{x} p|r|q"


def test_config_is_checked_before_anything_runs():
    AIFeedbackConfig().validate()
    for data, field in (({"compare_template": "{prompt}"}, "compare_template"),
                        ({"judge_url": "ftp://host/v1", "judge_model": "m"}, "judge_url"),
                        ({"judge_url": "http://127.0.0.1:1/v1"}, "judge_model"),
                        ({"mode": "vote"}, "mode"),
                        ({"dataset": "sample-sft"}, "dataset"),
                        ({"order_disagreement": "maybe"}, "order_disagreement")):
        with pytest.raises(ConfigError) as err:
            AIFeedbackConfig(**data).validate()
        assert err.value.field == field, data


# -- the job with the tiny model --------------------------------------------------------------
def tiny_job(tiny_model_dir, **over) -> dict:
    return {"model": str(tiny_model_dir), "judge": str(tiny_model_dir), "limit": 3,
            "max_new_tokens": 10, "judge_max_new_tokens": 10, "judge_temperature": 1.0,
            **over}


def test_critique_mode_makes_pairs_and_sft_rows(store, tiny_model_dir):
    from engine.runtime.jobs import run_sync

    run = run_sync(store, "ai_feedback", tiny_job(tiny_model_dir, mode="critique",
                                                  dataset="cai"))
    assert run["status"] == "succeeded", run["error"]
    s = run["summary"]
    assert s["pairs_made"] + len(s["skipped"]) == 3 and s["pairs_made"] >= 1, s
    assert s["sft_rows_made"] == s["pairs_made"] and s["sft_dataset"] == "cai-sft"
    pairs, sft = store.list_rows("cai"), store.list_rows("cai-sft")
    assert len(pairs) == s["pairs_made"] and len(sft) == s["sft_rows_made"]
    assert store.get_dataset("cai-sft")["kind"] == "sft"
    hh = con.get_constitution(store, "helpful-safe-en")
    for pair, row in zip(pairs, sft):
        assert pair["source"] == "ai" and row["source"] == "ai"
        meta = pair["meta"]
        assert META_KEYS <= set(meta) and meta["mode"] == "critique"
        assert meta["job_run"] == run["id"] and meta["judge"] == str(tiny_model_dir)
        assert (meta["constitution"], meta["constitution_version"]) == ("helpful-safe-en", 1)
        assert meta["principle"] in hh["principles"] and meta["critique"].strip()
        assert meta["templates"] == tpl.templates_hash(tpl.DEFAULTS)
        assert pair["chosen"] != pair["rejected"]
        assert row["prompt"] == pair["prompt"] and row["response"] == pair["chosen"]
    for skip in s["skipped"]:
        assert {"row", "prompt", "reason"} <= set(skip) and skip["reason"]


def test_compare_mode_samples_two_answers_and_records_both_orders(store, tiny_model_dir):
    from engine.runtime.jobs import run_sync

    run = run_sync(store, "ai_feedback", tiny_job(tiny_model_dir, mode="compare",
                                                  order_disagreement="tie",
                                                  constitution="concise-factual-fr"))
    assert run["status"] == "succeeded", run["error"]
    s = run["summary"]
    assert s["pairs_made"] == 3 and s["skipped"] == [], s
    rows = store.list_rows("ai-preferences")
    assert len(rows) == 3 and store.get_dataset("ai-preferences")["kind"] == "preference"
    for r in rows:
        m = r["meta"]
        assert r["source"] == "ai" and META_KEYS <= set(m) and m["mode"] == "compare"
        assert 0.5 <= m["confidence"] <= 1.0 and isinstance(m["order_agreement"], bool)
        assert m["tie"] == (not m["order_agreement"])
        # the chosen answer is the one the two orders prefer on average
        assert (m["p_first"] + m["p_second"]) / 2 >= 0.5
        assert m["constitution"] == "concise-factual-fr"
    # the Runs page shows the pairs made as the run's samples
    samples = store.get_samples(run["id"])
    assert [x["response"] for x in samples] == [r["chosen"] for r in rows]
    assert all(x["extra"]["rejected"] and x["extra"]["principle"] for x in samples)
    # drop: a pair whose orders disagree is reported, not stored
    run = run_sync(store, "ai_feedback", tiny_job(tiny_model_dir, mode="compare",
                                                  dataset="ai-drop", order_disagreement="drop"))
    s = run["summary"]
    assert s["pairs_made"] + len(s["skipped"]) == 3
    assert all("disagree" in k["reason"] for k in s["skipped"])
    assert all(r["meta"]["order_agreement"] for r in store.list_rows("ai-drop"))


def test_compare_judges_a_preference_datasets_own_pairs(store, tiny_model_dir):
    """No policy: the input pairs are judged and each AI pair names its source row. With
    "average" every pair is kept, labelled by the mean of the two orders."""
    from engine.runtime.jobs import run_sync

    run = run_sync(store, "ai_feedback", {"model": "/no/such/policy", "judge":
                                          str(tiny_model_dir), "mode": "compare",
                                          "prompts": "sample-preferences", "limit": 4,
                                          "order_disagreement": "average", "dataset": "ai-vs"})
    assert run["status"] == "succeeded", run["error"]
    source = {r["id"]: r for r in store.list_rows("sample-preferences", limit=4)}
    rows = store.list_rows("ai-vs")
    assert len(rows) == 4
    for r in rows:
        m = r["meta"]
        src = source[m["input_row"]]
        assert m["input_dataset"] == "sample-preferences" and m["input_label"] == "chosen"
        assert {r["chosen"], r["rejected"]} == {src["chosen"], src["rejected"]}
        assert m["tie"] is False and m["ai_choice"] in ("chosen", "rejected")
        assert (r["chosen"] == src["chosen"]) == (m["ai_choice"] == "chosen")
        assert m["agrees_with_input"] == (m["ai_choice"] == "chosen")
        # the label is the mean of the two orders' P(source's chosen is better)
        assert ((m["p_first"] + m["p_second"]) / 2 >= 0.5) == (m["ai_choice"] == "chosen")
    # AI pairs train like any others (pairs kept as ties would be left out: none here)
    for stage in ("reward", "dpo"):
        trained = run_sync(store, stage, {"model": str(tiny_model_dir), "dataset": "ai-vs",
                                          "max_steps": 1, "batch_size": 2, "max_length": 64,
                                          "save_every": 0, "eval_every": 0})
        assert trained["status"] == "succeeded", (stage, trained["error"])


def test_resume_after_cancel_keeps_rows_and_does_not_duplicate(store, tiny_model_dir):
    from engine.runtime import stages
    from engine.runtime.jobs import execute

    cfg = stages.get("ai_feedback").make_config(
        {"model": str(tiny_model_dir), "judge": str(tiny_model_dir), "mode": "compare",
         "prompts": "sample-preferences", "limit": 5, "order_disagreement": "tie",
         "dataset": "ai-resume"})
    rid = store.create_run("ai_feedback", {}, status="queued")
    cancel = threading.Event()

    def cancel_after_two(config, ctx):
        """The real stage; a Cancel pressed once two prompts are done."""
        progress = ctx.progress

        def report(step, total=None, message=None):
            progress(step, total, message)
            if step >= 2:
                cancel.set()
        ctx.progress = report
        return run_ai_feedback(config, ctx)

    assert execute(store, rid, cfg, cancel_after_two, cancel_event=cancel) == "cancelled"
    kept = store.list_rows("ai-resume")
    assert [r["meta"]["item"] for r in kept] == [0, 1]     # made before the cancel: kept
    assert execute(store, rid, cfg, run_ai_feedback, resume=True) == "succeeded"
    rows = store.list_rows("ai-resume")
    assert sorted(r["meta"]["item"] for r in rows) == [0, 1, 2, 3, 4]
    assert [r["id"] for r in rows[:2]] == [r["id"] for r in kept]
    summary = store.get_run(rid)["summary"]
    assert summary["prompts_done_before"] == 2 and summary["pairs_made"] == 3
    assert summary["pairs_made_before"] == 2


def test_wrong_kind_dataset_refused_before_any_model_loads(store, tiny_model_dir):
    """The policy and judge name folders that do not exist: had a model been loaded, the
    error would name them; it names the dataset instead."""
    from engine.runtime.jobs import run_sync

    store.create_dataset("notes", "sft")
    bad = {"model": "/no/such/policy", "judge": "/no/such/judge", "mode": "compare",
           "dataset": "notes"}
    run = run_sync(store, "ai_feedback", bad)
    assert run["status"] == "failed"
    assert "'notes' is a sft dataset" in run["error"] and "preference" in run["error"]
    store.create_dataset("cai-sft", "preference")
    run = run_sync(store, "ai_feedback", {**bad, "mode": "critique", "dataset": "cai"})
    assert run["status"] == "failed" and "'cai-sft' is a preference dataset" in run["error"]
    assert "cai" not in {d["name"] for d in store.list_datasets()}   # nothing created
    run = run_sync(store, "ai_feedback", {**bad, "dataset": "fresh"})
    assert run["status"] == "failed" and "/no/such/policy" in run["error"]
    run = run_sync(store, "ai_feedback", {**bad, "dataset": "fresh", "constitution": "nope"})
    assert run["status"] == "failed" and "constitution 'nope' does not exist" in run["error"]


def test_cli_ai_label_prints_one_json_document(store, tiny_model_dir, capsys):
    from engine.__main__ import main

    code = main(["--db", str(store.path), "data", "ai-label", "--mode", "compare",
                 "--prompts", "sample-preferences", "--limit", "2", "--dataset", "cli-ai",
                 "--judge", str(tiny_model_dir), "--set", "order_disagreement=tie"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["status"] == "succeeded" and out["pairs_made"] == 2 and out["skipped"] == []
    assert out["judge"] == str(tiny_model_dir) and out["seconds"] > 0
    assert len(store.list_rows("cli-ai")) == 2
    code = main(["--db", str(store.path), "data", "ai-label", "--mode", "compare",
                 "--dataset", "sample-sft", "--judge", str(tiny_model_dir)])
    assert code != 0


def test_the_default_averages_the_two_orders_and_an_even_mean_is_a_tie(store, tiny_model_dir):
    """The default keeps a pair whose orders disagree, labelled by the mean of both orders
    (a small judge's position bias cancels); a mean of exactly 1/2 is a tie."""
    from engine.feedback.jobs import AIFeedbackConfig
    from engine.runtime.jobs import run_sync

    assert AIFeedbackConfig().order_disagreement == "average"
    run = run_sync(store, "ai_feedback", tiny_job(tiny_model_dir, mode="compare",
                                                  dataset="ai-avg"))
    assert run["status"] == "succeeded", run["error"]
    rows = store.list_rows("ai-avg")
    assert run["summary"]["pairs_made"] == len(rows) == 3
    for r in rows:
        m = r["meta"]
        mean = (m["p_first"] + m["p_second"]) / 2
        assert mean >= 0.5 and (not m["tie"] or mean == 0.5)  # meta rounds to 4 places

