"""Pair sources (engine.data.sources): the class of every row, counts and a filter, and the
source mix of reward and DPO training (ai_share), on a small store and the tiny model."""
from __future__ import annotations

import pytest

from engine.data import sources as S
from engine.schema import ConfigError


def mixed_store(store, ai: int = 6, human: int = 3, imported: int = 2, name: str = "mixed"):
    """A preference dataset with rows of every source: AI, app votes, a file, the editor,
    none recorded; every row in the train split."""
    store.create_dataset(name, "preference", eval_fraction=0.0)
    store.add_rows(name, [{"prompt": f"AI question {i}?", "chosen": f"Good {i}.",
                           "rejected": f"Bad {i}!", "meta": {"judge": "embedded"}}
                          for i in range(ai)], source="ai")
    for i in range(human):
        store.add_rows(name, [{"prompt": f"Voted question {i}?", "chosen": f"Fine {i}.",
                               "rejected": f"Poor {i}!", "meta": {"origin": "human"}}],
                       source=f"pair_sample#{i + 1}")
    store.add_rows(name, [{"prompt": f"Imported question {i}?", "chosen": f"Yes {i}.",
                           "rejected": f"No {i}!"} for i in range(imported)],
                   source="hh-rlhf.jsonl")
    store.add_rows(name, [{"prompt": "Typed?", "chosen": "Typed.", "rejected": "Typo!"}],
                   source="editor")
    store.add_rows(name, [{"prompt": "Bare?", "chosen": "Bare.", "rejected": "Bear!"}])
    return name


def test_classes_counts_and_filter(store):
    mixed_store(store)
    assert S.pair_sources(store, "mixed") == {"human": 3, "ai": 6, "imported": 2,
                                              "edited": 1, "unknown": 1}
    ai = list(S.rows_by_source(store, "mixed", "ai"))
    assert len(ai) == 6 and all(r["source"] == "ai" for r in ai)
    people = list(S.rows_by_source(store, "mixed", ["human", "edited"]))
    assert [r["prompt"] for r in people] == [f"Voted question {i}?" for i in range(3)] + ["Typed?"]
    with pytest.raises(ValueError, match="robot"):
        list(S.rows_by_source(store, "mixed", "robot"))
    assert S.source_class({"source": "", "meta": {"origin": "ai"}}) == "ai"
    assert S.source_class({"source": "sample_preferences.jsonl"}) == "sample"


def test_sample_datasets_are_sample_and_votes_human(store):
    from engine import data as D
    from engine.data import collect

    D.ensure_sample_datasets(store)
    counts = S.pair_sources(store, "sample-preferences")
    assert list(counts) == ["sample"] and counts["sample"] == store.get_dataset(
        "sample-preferences")["rows"]
    run = store.create_run("pair_sample", {"prompt": "Hi?", "source": "base"},
                           status="succeeded")
    store.add_samples(run, 0, [{"prompt": "Hi?", "response": "Hello.", "label": "A"},
                               {"prompt": "Hi?", "response": "Go away.", "label": "B"}])
    collect.record_vote(store, run, "a", "votes")
    assert S.pair_sources(store, "votes") == {"human": 1}


def test_mix_sources_share_seed_and_refusals(store):
    rows = store.list_rows(mixed_store(store, ai=6, human=3, imported=3))   # 6 AI, 8 others
    assert S.mix_sources(rows, None, 0) is rows
    half = S.mix_sources(rows, 0.5, seed=1)
    # n = min(6/0.5, 8/0.5) = 12: 6 AI and 6 of the 8 others (subsampled)
    assert sum(S.source_class(r) == "ai" for r in half) == 6 and len(half) == 12
    assert half == S.mix_sources(rows, 0.5, seed=1)              # the same seed, the same rows
    assert any(S.mix_sources(rows, 0.5, seed=s) != half for s in range(2, 8))
    assert [r["id"] for r in half] == sorted(r["id"] for r in half)   # order kept
    quarter = S.mix_sources(rows, 0.25, seed=0)   # n = min(24, 10.67): 3 AI (of 6), 8 others
    assert sum(S.source_class(r) == "ai" for r in quarter) == 3 and len(quarter) == 11
    assert all(S.source_class(r) == "ai" for r in S.mix_sources(rows, 1.0, 0))
    assert not any(S.source_class(r) == "ai" for r in S.mix_sources(rows, 0.0, 0))
    humans = [r for r in rows if S.source_class(r) != "ai"]
    with pytest.raises(ConfigError) as err:
        S.mix_sources(humans, 0.3, 0, dataset="mixed")
    assert err.value.field == "ai_share" and "no AI-labelled" in str(err.value)
    assert S.mix_sources(humans, 0.0, 0) == humans
    with pytest.raises(ConfigError, match="ai_share: .*only AI-labelled"):
        S.mix_sources([r for r in rows if S.source_class(r) == "ai"], 0.5, 0)


def test_reward_and_dpo_refuse_a_share_the_dataset_cannot_give(store):
    """Refused with the field named, before any model loads (the model path is bogus)."""
    from engine.runtime.jobs import run_sync

    store.create_dataset("people", "preference")
    store.add_rows("people", [{"prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": f"B{i}!",
                               "split": "train"} for i in range(6)], source="votes.jsonl")
    for stage in ("reward", "dpo"):
        run = run_sync(store, stage, {"model": "/no/such/model", "dataset": "people",
                                      "ai_share": 0.5})
        assert run["status"] == "failed"
        assert "ai_share: dataset 'people' has no AI-labelled" in run["error"]
        assert "no/such/model" not in run["error"]
    with pytest.raises(ConfigError, match="ai_share"):
        S.mix_sources([], 1.5, 0)


def test_reward_and_dpo_train_on_the_mix(store, tiny_model_dir):
    from engine.runtime.jobs import run_sync

    mixed_store(store, ai=6, human=3, imported=3)   # 6 AI, 8 others, no eval rows
    store.create_dataset("held", "preference")
    common = {"model": str(tiny_model_dir), "dataset": "mixed", "max_steps": 1,
              "batch_size": 2, "max_length": 32, "save_every": 0, "seed": 3}
    reward = run_sync(store, "reward", {**common, "ai_share": 0.5, "normalize": False,
                                        "max_eval_pairs": 2})
    assert reward["status"] == "succeeded", reward["error"]
    # 14 rows, the last 1 held out for evaluation (no eval split): 13 = 5 or 6 AI + others;
    # a share of 1/2 keeps min(AI, others) of each
    log = "\n".join(line["message"] for line in store.get_log(reward["id"]))
    assert "source mix:" in log
    n_ai, n_other = _mix_counts(log)
    assert n_ai == n_other and reward["summary"]["train_pairs"] == n_ai + n_other
    dpo = run_sync(store, "dpo", {**common, "ai_share": 1.0, "eval_every": 0,
                                  "sample_every": 0, "samples_per_eval": 0})
    assert dpo["status"] == "succeeded", dpo["error"]
    assert dpo["summary"]["train_pairs"] == 6   # the last row held out is the bare one
    plain = run_sync(store, "dpo", {**common, "eval_every": 0, "sample_every": 0,
                                    "samples_per_eval": 0})
    assert plain["summary"]["train_pairs"] == 13


def _mix_counts(log: str) -> tuple[int, int]:
    import re

    m = re.search(r"source mix: (\d+) AI-labelled and (\d+) other", log)
    return int(m.group(1)), int(m.group(2))


def test_the_dpo_and_reward_forms_leave_the_share_empty_by_default(store):
    """An optional float drawn empty is None (every pair), not 0 (no AI pair at all)."""
    from streamlit.testing.v1 import AppTest

    from engine.data import ensure_sample_datasets
    from tests.conftest import ROOT

    ensure_sample_datasets(store)
    for stage in ("dpo", "reward"):
        at = AppTest.from_file(str(ROOT / "views" / f"{stage}.py"), default_timeout=90).run()
        assert not at.exception, at.exception
        box = at.number_input(key=f"form.{stage}.ai_share.en")
        assert box.value is None and at.session_state[f"form.{stage}"]["ai_share"] is None
        box.set_value(0.25).run()
        assert at.session_state[f"form.{stage}"]["ai_share"] == 0.25
        at.number_input(key=f"form.{stage}.ai_share.en").set_value(None).run()
        assert at.session_state[f"form.{stage}"]["ai_share"] is None


def test_ai_ties_are_never_trained_on():
    from engine.data.sources import mix_sources

    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "source": "ai",
             "meta": {"tie": True}},
            {"prompt": "q", "chosen": "c", "rejected": "d", "source": "ai", "meta": {"tie": False}},
            {"prompt": "r", "chosen": "e", "rejected": "f", "source": "imported", "meta": {}}]
    said = []
    kept = mix_sources(rows, None, 0, "x", said.append)
    assert [r["prompt"] for r in kept] == ["q", "r"]
    assert said and "1 pair" in said[0]
    assert [r["prompt"] for r in mix_sources(rows, 0.5, 0, "x")] == ["q", "r"]
