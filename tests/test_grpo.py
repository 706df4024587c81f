"""GRPO / RLOO: the stage on the hand-set bigram model of tests/rl_helpers.py (after the
assistant header it says Yes / No / Sure / Fine, then "." or EOS half and half), the group
equations on its stored samples, bad configs, cancel and resume, and the page."""
from __future__ import annotations

import math

import pytest
import torch

from engine import objectives as O
from engine.training import rewards_builtin as RB
from engine.training.grpo import GRPOTrainer, train_grpo
from tests.conftest import ROOT
from tests.rl_helpers import PROMPTS, fake_sft_run
from tests.rl_helpers import grpo_config as _config
from tests.rl_helpers import prompt_dataset as _dataset


def test_group_statistics_and_loss_by_hand():
    R = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    assert float(O.group_reward_std(R)) == pytest.approx(0.25)   # (0.5 + 0) / 2
    assert float(O.zero_signal_fraction(R)) == 0.5
    # two answers (3 and 2 tokens; the third token of answer 2 is padding), advantages 2 and
    # −1, ε = 0.2, ratios r = π_θ/π_old on both sides of the band [0.8, 1.2]:
    #   answer 1 (Â = 2):  r = 1.5 → max(−3.0, −2.4) = −2.4 (clipped)
    #                      r = 0.7 → max(−1.4, −1.6) = −1.4
    #                      r = 1.1 → max(−2.2, −2.2) = −2.2
    #   answer 2 (Â = −1): r = 0.5 → max(0.5, 0.8) = 0.8 (clipped)
    #                      r = 1.3 → max(1.3, 1.2) = 1.3
    #   sum −3.9 over 5 tokens: −0.78; Dr. GRPO (2 answers × 4 tokens): −3.9 / 8 = −0.4875
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.5, -3.0]])
    ratios = torch.tensor([[1.5, 0.7, 1.1], [0.5, 1.3, 50.0]])   # 50: padding, must not count
    new = old + ratios.log()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([2.0, -1.0])
    loss, pg, kl = O.grpo_loss(new, old, new, adv, mask, 0.2, 0.5)
    assert float(pg) == pytest.approx(-0.78, abs=1e-6) and float(kl) == pytest.approx(0.0, abs=1e-7)
    assert float(loss) == pytest.approx(-0.78, abs=1e-6)
    _, pg_c, _ = O.grpo_loss(new, old, new, adv, mask, 0.2, 0.0, normalizer=8)
    assert float(pg_c) == pytest.approx(-0.4875, abs=1e-6)
    # β·k₃ to the reference: π_ref/π_θ = e^−0.1 on every token, k₃ = e^−0.1 − 1 + 0.1;
    # divided like the policy term (5 tokens / 5, or / 8 for Dr. GRPO)
    k3 = math.expm1(-0.1) + 0.1
    loss, pg, kl = O.grpo_loss(new, old, new - 0.1, adv, mask, 0.2, 0.5)
    assert float(kl) == pytest.approx(k3, rel=1e-5)
    assert float(loss) == pytest.approx(-0.78 + 0.5 * k3, rel=1e-5)
    loss, pg, kl = O.grpo_loss(new, old, new - 0.1, adv, mask, 0.2, 0.5, normalizer=8)
    assert float(kl) == pytest.approx(k3 * 5 / 8, rel=1e-5)
    assert float(loss) == pytest.approx(-0.4875 + 0.5 * k3 * 5 / 8, rel=1e-5)


def test_grpo_raises_the_reward_and_logs_every_quantity(store, bigram_dir):
    from engine.data.collect import model_sources
    from engine.inference.models import adapter_dir, read_adapter_base
    from engine.runtime.jobs import run_sync

    _dataset(store)
    run = run_sync(store, "grpo", _config(bigram_dir, max_steps=10))
    assert run["status"] == "succeeded", run["error"]
    rid = run["id"]
    rewards = [m["value"] for m in store.get_metrics(rid, ["reward_mean"])]
    assert len(rewards) == 10
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.2, rewards
    names = set(store.metric_names(rid))
    assert names >= {"reward_mean", "reward_std_within_group", "zero_signal_fraction",
                     "reward_ends_with_period", "clipfrac", "kl", "entropy",
                     "response_length", "eos_fraction", "policy_loss", "grad_norm",
                     "time_generate", "time_train"}
    assert "value_loss" not in names
    # the group advantages stored with the samples are the equations' on their rewards
    samples = store.get_samples(rid)
    assert len(samples) == 10 * 2 * 4
    for step in (1, 10):
        rows = [s for s in samples if s["step"] == step]
        for g in (0, 1):
            group = [s for s in rows if s["extra"]["group"] == g]
            assert len(group) == 4 and len({s["prompt"] for s in group}) == 1
            R = torch.tensor([[s["reward"] for s in group]])
            expected = O.grpo_advantages(R)[0].tolist()
            assert [s["extra"]["advantage"] for s in group] == pytest.approx(expected, abs=1e-5)
            assert all(s["extra"]["rewards"]["ends_with_period"] == s["reward"] for s in group)
    # a standard PEFT adapter on the base, offered to Compare
    folder = adapter_dir(rid)
    assert (folder / "adapter_model.safetensors").exists()
    assert read_adapter_base(folder) == str(bigram_dir)
    assert {a["kind"] for a in store.list_artifacts(rid)} == {"adapter"}
    assert str(rid) in model_sources(store)
    exported = run_sync(store, "export", {"run_id": rid})
    assert exported["status"] == "succeeded", exported["error"]
    assert run["summary"]["last_reward"] == rewards[-1]


@pytest.mark.parametrize("advantage, fn", [("dr_grpo", O.dr_grpo_advantages),
                                           ("rloo", O.rloo_advantages)])
def test_dr_grpo_and_rloo_run_with_weighted_rewards(store, bigram_dir, advantage, fn):
    from engine.runtime.jobs import run_sync

    _dataset(store)
    cfg = _config(bigram_dir, max_steps=2, advantage=advantage,
                  builtin_rewards=["ends_with_period", "contains_words"],
                  reward_params={"contains_words": {"words": ["yes"]}},
                  reward_weights=[1.0, 0.5])
    run = run_sync(store, "grpo", cfg)
    assert run["status"] == "succeeded", run["error"]
    last = store.last_metrics(run["id"])
    assert last["reward_mean"] == pytest.approx(
        last["reward_ends_with_period"] + 0.5 * last["reward_contains_words"], abs=1e-5)
    group = [s for s in store.get_samples(run["id"], step=2) if s["extra"]["group"] == 0]
    for s in group:
        parts = s["extra"]["rewards"]
        assert s["reward"] == pytest.approx(parts["ends_with_period"]
                                            + 0.5 * parts["contains_words"])
    expected = fn(torch.tensor([[s["reward"] for s in group]]))[0].tolist()
    assert [s["extra"]["advantage"] for s in group] == pytest.approx(expected, abs=1e-5)


def test_a_constant_reward_has_no_signal(store, bigram_dir):
    _dataset(store)
    trainer = GRPOTrainer(_config(bigram_dir, builtin_rewards=["contains_words"],
                                  reward_params={"contains_words": {"words": ["zebra"]}}), store)
    metrics, rows = trainer.step(1)
    assert metrics["zero_signal_fraction"] == 1.0
    assert metrics["reward_std_within_group"] == 0.0
    assert all(r["advantage"] == 0.0 for r in rows)
    assert metrics["policy_loss"] == pytest.approx(0.0, abs=1e-7)


def test_a_nan_reward_fails_the_run_naming_it(store, bigram_dir, monkeypatch):
    from engine.runtime.jobs import run_sync

    monkeypatch.setitem(RB.REWARDS, "broken_rule",
                        RB.RewardSpec("broken_rule", lambda p, r: float("nan"), {}))
    _dataset(store)
    run = run_sync(store, "grpo", _config(bigram_dir, max_steps=2,
                                          builtin_rewards=["ends_with_period", "broken_rule"]))
    assert run["status"] == "failed"
    assert "broken_rule" in run["error"] and "step 1" in run["error"]


def test_bad_configs_are_refused_before_any_model_loads(store, monkeypatch):
    from engine.inference import models
    from engine.runtime import stages
    from engine.schema import ConfigError

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_base", no_loading)
    spec = stages.get("grpo")
    cases = [({"group_size": 1}, "group_size"),
             ({"reward_weights": [1.0, 2.0]}, "reward_weights"),
             ({"builtin_rewards": ["ends_with_period", "politeness"], "reward_weights": [1]},
              "reward_weights"),
             ({"builtin_rewards": ["no_such_rule"]}, "builtin_rewards"),
             ({"builtin_rewards": []}, "builtin_rewards"),
             ({"advantage": "ppo"}, "advantage"),
             ({"batch_size": 3, "group_size": 3, "minibatches": 2}, "minibatches")]
    for data, field in cases:
        with pytest.raises(ConfigError) as err:
            spec.make_config(data)
        assert err.value.field == field, (data, err.value)


def test_cancel_then_resume_replays_the_same_metrics(store, bigram_dir):
    from engine.runtime.jobs import execute, run_sync
    from tests.job_helpers import run_cancelled_after

    _dataset(store)
    cfg = _config(bigram_dir, max_steps=4, save_every=2)
    names = ["reward_mean", "kl", "policy_loss", "entropy"]
    straight = run_sync(store, "grpo", cfg)
    reference = {(m["step"], m["name"]): m["value"]
                 for m in store.get_metrics(straight["id"], names)}

    rid = run_cancelled_after(store, "grpo", cfg, 2)
    assert [m["step"] for m in store.get_metrics(rid, ["reward_mean"])] == [1, 2]
    assert execute(store, rid, cfg, train_grpo, resume=True) == "succeeded"
    assert any("resumed from step 2" in r["message"] for r in store.get_log(rid))
    again = store.get_metrics(rid, names)
    assert [m["step"] for m in again if m["name"] == "reward_mean"] == [1, 2, 3, 4]
    for m in again:
        assert m["value"] == pytest.approx(reference[(m["step"], m["name"])], abs=1e-4)


def test_page_renders_and_starts_a_run(store, bigram_dir):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from engine.runtime.jobs import get_manager, run_sync
    from ui.common import widget_key
    from ui.forms import field_key

    st.cache_resource.clear()
    try:
        _dataset(store)
        done = run_sync(store, "grpo", _config(bigram_dir, max_steps=2))
        at = AppTest.from_file(str(ROOT / "views" / "grpo.py"), default_timeout=60)
        at.session_state["model_spec"] = str(bigram_dir)
        at.session_state["grpo_view"] = done["id"]
        at.run()
        assert not at.exception, at.exception
        formulas = " ".join(x.value for x in at.latex)
        for name in ("grpo_advantages", "group_reward_std", "zero_signal_fraction", "kl_k3",
                     "clip_fraction", "grpo_loss"):
            assert O.LATEX[name] in formulas, name
        assert len(at.get("vega_lite_chart")) >= 6
        groups = at.dataframe[0].value   # the last step's 2 groups of 4 answers
        assert len(groups) == 2 * 4 and list(groups.iloc[:, 0]) == [0] * 4 + [1] * 4
        stored = [s["extra"]["advantage"] for s in store.get_samples(done["id"], step=2)]
        assert sorted(groups.iloc[:, 2]) == pytest.approx(sorted(stored))
        at.number_input(key=field_key("grpo", "group_size")).set_value(3)
        at.number_input(key=field_key("grpo", "max_steps")).set_value(1)
        at.multiselect(key=widget_key("grpo_rules")).set_value(
            ["ends_with_period", "politeness"]).run()
        at.number_input(key="grpo_weight_politeness").set_value(0.5).run()
        at.button(key="start.grpo").click().run()
        assert not at.exception, at.exception
        runs = [r for r in store.list_runs(stage="grpo") if r["id"] != done["id"]]
        assert len(runs) == 1
        cfg = runs[0]["config"]
        assert cfg["group_size"] == 3 and cfg["max_steps"] == 1
        assert cfg["builtin_rewards"] == ["ends_with_period", "politeness"]
        assert cfg["reward_weights"] == [1.0, 0.5]
        assert cfg["model"] == str(bigram_dir) and cfg["dataset"] == "prompts"
        # the run it started (1 step) ends before the test does, and ends well
        assert get_manager(store).wait(runs[0]["id"], 120) == "succeeded", \
            store.get_run(runs[0]["id"])["error"]
        # in French too
        french = AppTest.from_file(str(ROOT / "views" / "grpo.py"), default_timeout=60)
        french.session_state["lang"] = "fr"
        french.session_state["grpo_view"] = done["id"]
        french.run()
        assert not french.exception, french.exception
        assert any("Les groupes côte à côte" in h.value for h in french.subheader)
    finally:
        st.cache_resource.clear()


def test_from_an_sft_run_the_reference_is_that_adapter_frozen(store, bigram_dir):
    _dataset(store)
    sft_id = fake_sft_run(store, bigram_dir)
    trainer = GRPOTrainer(_config(bigram_dir, sft_run=sft_id, learning_rate=1e-2), store)
    trainable = {n for n, p in trainer.policy.named_parameters() if p.requires_grad}
    assert trainable and all(".policy." in n for n in trainable)
    ro = trainer.generate(PROMPTS[:2])
    assert ro.response.shape[0] == 2 * 4 and ro.prompts[:4] == [PROMPTS[0]] * 4
    batch = (ro.query, ro.query_mask, ro.response, ro.mask)
    m = ro.mask.bool()
    ref_before = trainer.ref_logprobs(*batch)
    assert torch.allclose(ref_before[m], trainer.policy_logprobs(*batch)[m], atol=1e-5)
    assert torch.allclose(ro.logp[m], ref_before[m], atol=1e-4)  # the sampling pass's own
    for step in (1, 2):
        trainer.step(step)
    assert torch.equal(trainer.ref_logprobs(*batch), ref_before)
    assert (trainer.policy_logprobs(*batch) - ref_before)[m].abs().max() > 1e-3
