"""Human preference collection: a light pair_sample job on the tiny model, then a vote."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from engine.data import collect
from engine.runtime import stages
from engine.runtime.jobs import JobManager, get_manager
from tests.conftest import ROOT

PROMPT = "Who wrote Les Misérables?"


@pytest.fixture
def fresh_resources():
    import streamlit as st

    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def _sample(jobs, tiny_model_dir, prompt=PROMPT, **kw) -> int:
    cfg = collect.PairSampleConfig(model=str(tiny_model_dir), prompt=prompt, max_new_tokens=8,
                                   temperature=1.0, top_p=1.0, seed=kw.pop("seed", 3), **kw)
    return jobs.submit("pair_sample", cfg)


def test_stage_is_registered_as_light():
    spec = stages.get("pair_sample")
    assert spec.light and spec.config_cls is collect.PairSampleConfig
    assert spec.function() is collect.sample_pair
    assert collect.PairSampleConfig().model == "embedded"


def test_pair_sample_then_vote_stores_a_pair_with_provenance(store, tiny_model_dir):
    jobs = JobManager(store)
    rid = _sample(jobs, tiny_model_dir)
    assert jobs.wait(rid, 120) == "succeeded", store.get_run(rid)["error"]
    pair = collect.get_pair(store, rid)
    assert pair["prompt"] == PROMPT and pair["a"] and pair["b"] and pair["a"] != pair["b"]
    samples = store.get_samples(rid)
    assert [s["extra"]["label"] for s in samples] == ["A", "B"]

    result = collect.record_vote(store, rid, "b", "human")
    assert result["stored"] and result["dataset"] == "human"
    (row,) = store.list_rows("human")
    assert (row["prompt"], row["chosen"], row["rejected"]) == (PROMPT, pair["b"], pair["a"])
    meta = row["meta"]
    assert meta["pair_sample_run"] == rid and meta["model"] == str(tiny_model_dir)
    assert meta["source"] == "base" and meta["choice"] == "b"
    assert (meta["temperature"], meta["top_p"], meta["max_new_tokens"], meta["seed"]) == \
        (1.0, 1.0, 8, 3)
    assert row["id"] == result["row_id"] and row["source"] == f"pair_sample#{rid}"
    with pytest.raises(ValueError, match="already voted"):
        collect.record_vote(store, rid, "a", "human")

    # a tie is recorded on the run and counted, not stored as a pair
    rid2 = _sample(jobs, tiny_model_dir, prompt=[{"role": "user", "content": "Capitale du Canada ?"}],
                   seed=None)
    assert jobs.wait(rid2, 120) == "succeeded"
    assert isinstance(store.get_run(rid2)["summary"]["seed"], int)  # the drawn seed is kept
    assert collect.record_vote(store, rid2, "tie", "human")["stored"] is False
    assert store.get_dataset("human")["rows"] == 1
    assert store.get_dataset("human")["meta"]["tie"] == 1
    assert store.get_run(rid2)["summary"]["vote"] == "tie"
    assert collect.vote_counts(store, "human") == {"a": 0, "b": 1, "tie": 1, "both_bad": 0,
                                                   "pending": 0}
    # an SFT dataset cannot receive pairs
    store.create_dataset("sft-only", "sft")
    rid3 = _sample(jobs, tiny_model_dir)
    jobs.wait(rid3, 120)
    with pytest.raises(ValueError, match="SFT rows"):
        collect.record_vote(store, rid3, "a", "sft-only")


def test_empty_prompt_fails_the_job_clearly(store, tiny_model_dir):
    jobs = JobManager(store)
    rid = _sample(jobs, tiny_model_dir, prompt="  ")
    assert jobs.wait(rid, 60) == "failed"
    assert "prompt is empty" in store.get_run(rid)["error"]


def test_sources_list_base_and_finished_runs_with_adapters(store):
    from engine.inference.models import adapter_dir

    sft = store.create_run("sft", {"model": "embedded"}, status="succeeded")
    store.create_run("ppo", {"model": "embedded"}, status="failed")
    adapter_dir(sft).mkdir(parents=True)
    assert list(collect.model_sources(store)) == ["base"]  # no adapter saved yet
    (adapter_dir(sft) / "adapter_config.json").write_text("{}")
    assert list(collect.model_sources(store)) == ["base", str(sft)]


def test_collect_through_the_page(store, tiny_model_dir, fresh_resources):
    from engine import data

    data.ensure_sample_datasets(store)
    at = AppTest.from_file(str(ROOT / "views" / "data.py"), default_timeout=60)
    at.session_state["model_spec"] = str(tiny_model_dir)
    at.session_state["collect_max_new_tokens"] = 8
    at.session_state["collect_seed"] = 5
    at.run()
    assert not at.exception, at.exception
    at.selectbox(key="collect_prompt_ds").set_value("sample-preferences").run()
    at.button(key="collect_sample").click().run()
    assert not at.exception, at.exception
    rid = at.session_state["collect_run"]
    assert get_manager(store).wait(rid, 120) == "succeeded", store.get_run(rid)["error"]
    at.run()
    assert not at.exception, at.exception
    pair = collect.get_pair(store, rid)
    texts = [t.value for t in at.text]
    assert pair["a"] in texts and pair["b"] in texts
    at.session_state["collect_auto"] = False
    at.button(key="vote_a").click().run()
    assert not at.exception, at.exception
    (row,) = store.list_rows("human-preferences")
    assert row["chosen"] == pair["a"] and row["meta"]["pair_sample_run"] == rid
    assert row["prompt"] == data.prompts_of(store, "sample-preferences")[0]
    assert "collect_run" not in at.session_state
