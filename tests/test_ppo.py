"""PPO: every equation on hand-checkable tensors, then the stage on a tiny real model.

The training tests use a one-layer Llama whose weights are set by hand into a bigram
model over the embedded tokenizer: after the assistant header it says one of Yes / No /
Sure / Fine, then "." or EOS half and half ("." is always followed by EOS). With the
built-in reward "ends_with_period" the mean score starts near 0.5 and PPO must raise it.
(A randomly initialised tiny model is uniform over 49k tokens: nothing to reinforce.)
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from engine.objectives import kl_k1
from engine.training import rewards_builtin as RB
from engine.training.ppo import (RATIO_HIST_EDGES, AdaptiveKLController, FixedKLController,
                                 PPOConfig, PPOTrainer, logprobs_from_logits,
                                 per_token_rewards, ratio_histogram, truncate_after_eos)
from tests.conftest import ROOT
from tests.finished_runs import ppo_run as _finished_run
from tests.rl_helpers import PROMPTS, build_bigram_model  # noqa: F401 - (older imports)
from tests.rl_helpers import fake_sft_run as _fake_sft_run
from tests.rl_helpers import ppo_config as _config
from tests.rl_helpers import prompt_dataset as _dataset
from ui.common import widget_key
from ui.forms import field_key




# ======================================================================================
# PPO's own pieces (its equations are checked in tests/test_objectives.py)
# ======================================================================================
def test_kl_penalty_on_every_token_and_score_on_the_last():
    logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-2.0, -1.0, -3.0, -1.5]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # row 0: 3 tokens, row 1: 4 tokens
    score = torch.tensor([2.0, -1.0])
    beta = 0.1
    assert torch.equal(kl_k1(logp, ref), logp - ref)
    rewards, non_score = per_token_rewards(score, logp, ref, mask, beta)
    # row 0: −β·(0.5, −1, 0) and the score 2 on token 3 (index 2); padding gets nothing
    assert rewards[0].tolist() == pytest.approx([-0.05, 0.1, 2.0, 0.0])
    assert non_score[0].tolist() == pytest.approx([-0.05, 0.1, 0.0, 0.0])
    # row 1: −β·(1, 0, 2, 0.5) and the score −1 on the last token
    assert rewards[1].tolist() == pytest.approx([-0.1, 0.0, -0.2, -0.05 - 1.0])
    assert non_score[1].tolist() == pytest.approx([-0.1, 0.0, -0.2, -0.05])


def test_kl_controllers():
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 8) == 0.05
    ctl = AdaptiveKLController(0.1, target=4.0, horizon=80)
    # KL twice the target: the error is clipped to 0.2 → β·(1 + 0.2·8/80)
    assert ctl.update(8.0, 8) == pytest.approx(0.1 * 1.02)
    # KL 10% under the target: β·(1 − 0.1·8/80)
    before = ctl.value
    assert ctl.update(3.6, 8) == pytest.approx(before * (1 - 0.01))
    other = AdaptiveKLController(1.0, 4.0, 80)
    other.load_state_dict(ctl.state_dict())
    assert other.value == ctl.value


def test_truncate_after_eos_and_ratio_histogram():
    eos, pad = 2, 0
    resp = torch.tensor([[5, 2, 7, 8], [5, 6, 7, 8], [2, 9, 9, 2]])
    tokens, mask, has_eos = truncate_after_eos(resp, eos, pad)
    assert tokens.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]
    counts = ratio_histogram(torch.tensor([0.1, 1.0, 1.01, 1.24, 3.0]))
    assert sum(counts) == 5 and len(counts) == len(RATIO_HIST_EDGES) - 1
    assert counts[0] == 1 and counts[-1] == 1  # outside [0.5, 1.5]: the end bins
    assert counts[10] == 2  # [1.0, 1.05)


# ======================================================================================
# Built-in rewards
# ======================================================================================
def test_builtin_rewards():
    s = RB.get_scorer("ends_with_period")
    assert s.score(["q", "q"], ["Yes.", "Yes"]) == [1.0, 0.0]
    s = RB.get_scorer("target_length", {"target": 4})
    assert s.score(["q"] * 3, ["one two three four", "one two", ""]) == [0.0, -0.5, -1.0]
    s = RB.get_scorer("contains_words", {"words": "please, thank you"})
    assert s.score(["q"] * 2, ["Please, and THANK YOU.", "pleased"]) == [1.0, 0.0]
    assert RB.get_scorer("avoids_words", {"words": ["sorry"]}).score(
        ["q"] * 2, ["I am sorry", "Fine"]) == [0.0, 1.0]
    assert RB.get_scorer("politeness").score(["q"], ["Merci, s'il vous plaît"]) == [1.0]
    fr = RB.get_scorer("language_fr").score([[{"role": "user", "content": "q"}]] * 2,
                                            ["Je ne sais pas, merci", "I do not know the way"])
    assert fr[0] == 1.0 and fr[1] == -1.0
    with pytest.raises(ValueError, match="unknown parameter"):
        RB.get_scorer("ends_with_period", {"code": "import os"})
    with pytest.raises(ValueError, match="unknown"):
        RB.get_scorer("eval")


# ======================================================================================
# The stage, on a tiny real model
# ======================================================================================
def test_ppo_raises_the_score_while_kl_stays_bounded(store, bigram_dir):
    from engine.runtime.jobs import run_sync
    from engine.inference.models import adapter_dir, read_adapter_base

    _dataset(store)
    run = run_sync(store, "ppo", _config(bigram_dir))
    assert run["status"] == "succeeded", run["error"]
    rid = run["id"]
    scores = [m["value"] for m in store.get_metrics(rid, ["score_mean"])]
    kls = [m["value"] for m in store.get_metrics(rid, ["kl"])]
    assert len(scores) == 12
    early, late = sum(scores[:3]) / 3, sum(scores[-4:]) / 4
    assert late > early + 0.2, scores
    assert max(kls) < 15.0, kls
    summary = run["summary"]
    assert set(summary) >= {"first_score", "last_score", "final_kl", "seconds_per_step"}
    assert summary["first_score"] == scores[0] and summary["last_score"] == scores[-1]
    # every quantity of the update is logged each step
    names = set(store.metric_names(rid))
    assert names >= {"score_mean", "score_std", "non_score_reward", "kl", "beta",
                     "policy_loss", "value_loss", "clipfrac", "approx_kl", "ratio_mean",
                     "ratio_min", "ratio_max", "entropy", "response_length",
                     "time_generate", "time_score", "time_train", "ratio_hist_00"}
    last = store.last_metrics(rid)
    hist = sum(last[f"ratio_hist_{k:02d}"] for k in range(len(RATIO_HIST_EDGES) - 1))
    assert hist == pytest.approx(last["response_length"] * 8)  # one ratio per token
    samples = store.get_samples(rid)
    assert len(samples) == 12 * 4 and all(s["kl"] is not None for s in samples)
    assert {s["reward"] for s in samples} <= {0.0, 1.0}
    # the final policy adapter sits flat in the run folder, for the base model
    folder = adapter_dir(rid)
    assert (folder / "adapter_config.json").exists()
    assert (folder / "adapter_model.safetensors").exists()
    assert read_adapter_base(folder) == str(bigram_dir)
    assert (folder.parent / "value_head.safetensors").exists()
    assert {a["kind"] for a in store.list_artifacts(rid)} == {"adapter", "value_head"}


def _fresh_logprobs(model_dir, adapter, query, qmask, response, mask, temperature):
    """Log-probs from an independent copy: the base, plus an adapter folder if given."""
    from engine.inference.models import load_adapter, load_base

    model = load_base(str(model_dir), device="cpu").model
    if adapter is not None:
        model = load_adapter(model, adapter)
    ids = torch.cat([query, response], 1)
    attn = torch.cat([qmask, mask], 1)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=attn,
                    position_ids=(attn.cumsum(1) - 1).clamp(min=0))
    T = response.shape[1]
    return logprobs_from_logits(out.logits[:, -(T + 1):-1], response, temperature)


def test_reference_stays_frozen_and_the_saved_adapter_stands_alone(store, bigram_dir):
    from engine.inference.models import adapter_dir

    _dataset(store)
    sft_id = _fake_sft_run(store, bigram_dir)
    cfg = _config(bigram_dir, sft_run=sft_id, max_steps=3, learning_rate=1e-2)
    trainer = PPOTrainer(cfg, store)
    # only the policy adapter and the value head train; the reference never does
    trainable = {n for n, p in trainer.policy.named_parameters() if p.requires_grad}
    assert trainable and all(".policy." in n for n in trainable)
    n_opt = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for n, p in trainer.policy.named_parameters()
                        if ".policy." in n) + 64 + 1

    torch.manual_seed(0)
    ro = trainer.generate(PROMPTS)
    batch = (ro.query, ro.query_mask, ro.response, ro.mask)
    ref_before = trainer.ref_logprobs(*batch)
    pol_before = trainer.policy_logprobs(*batch)
    m = ro.mask.bool()
    # the policy starts as the SFT model, which is the reference
    assert torch.allclose(ref_before[m], pol_before[m], atol=1e-5)
    sft_fresh = _fresh_logprobs(bigram_dir, adapter_dir(sft_id), *batch, cfg.temperature)
    assert torch.allclose(ref_before[m], sft_fresh[m], atol=1e-5)

    for step in range(1, 4):
        trainer.step(step)
    ref_after = trainer.ref_logprobs(*batch)
    pol_after = trainer.policy_logprobs(*batch)
    assert torch.equal(ref_before, ref_after)
    assert (pol_after - pol_before)[m].abs().max() > 1e-3  # the policy did move

    # the old log-probs and values a rollout takes from its sampling pass are those of a
    # separate forward pass over prompt + response (now with a trained, non-zero V)
    ro2 = trainer.generate(PROMPTS)
    with torch.no_grad():
        logp2, v2, _ = trainer.forward(ro2.query, ro2.query_mask, ro2.response, ro2.mask,
                                       values=True)
    m2 = ro2.mask.bool()
    assert torch.allclose(ro2.logp[m2], logp2[m2], atol=1e-4)
    assert v2[m2].abs().max() > 1e-3 and torch.allclose(ro2.values[m2], v2[m2], atol=1e-4)

    # the trained adapter, loaded alone on the base, is the trained policy
    run_id = store.create_run("ppo", asdict(cfg))
    folder, head = trainer.save_final(run_id)
    assert json.loads((folder / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == str(bigram_dir)
    alone = _fresh_logprobs(bigram_dir, folder, *batch, cfg.temperature)
    assert torch.allclose(alone[m], pol_after[m], atol=1e-5)


def test_reference_without_sft_is_the_base(store, bigram_dir):
    _dataset(store)
    trainer = PPOTrainer(_config(bigram_dir, max_steps=2, learning_rate=1e-2), store)
    torch.manual_seed(0)
    ro = trainer.generate(PROMPTS[:4])
    batch = (ro.query, ro.query_mask, ro.response, ro.mask)
    base = _fresh_logprobs(bigram_dir, None, *batch, 1.0)
    m = ro.mask.bool()
    trainer.step(1)
    trainer.step(2)
    assert torch.allclose(trainer.ref_logprobs(*batch)[m], base[m], atol=1e-5)
    assert not torch.allclose(trainer.policy_logprobs(*batch)[m], base[m], atol=1e-4)


def test_a_reward_model_on_the_same_base_scores_through_a_shared_adapter(store, bigram_dir):
    from engine.training import reward as R
    from engine.inference.models import adapter_dir

    _dataset(store)
    rid = _fake_sft_run(store, bigram_dir)  # a LoRA adapter on the base ...
    store.update_run(rid, stage="reward")  # ... made into a reward run with a head
    head = R.new_head(64, seed=3)
    R.save_head(adapter_dir(rid) / R.HEAD_FILE, head, {"mean": 0.5, "std": 2.0})
    trainer = PPOTrainer(_config(bigram_dir, reward_run=rid, max_steps=1), store)
    assert trainer.reward_label == f"reward#{rid}"
    responses = ["Yes.", "No", "Sure."]
    shared = trainer.scorer.score(PROMPTS[:3], responses)
    private = R.RewardScorer(store, rid, device="cpu").score(PROMPTS[:3], responses)
    assert shared == pytest.approx(private, abs=1e-5)
    # scoring leaves the policy active and only the policy trainable
    assert trainer.policy.active_adapter == "policy"
    trainable = {n for n, p in trainer.policy.named_parameters() if p.requires_grad}
    assert trainable and all(".policy." in n for n in trainable)
    metrics, _ = trainer.step(1)
    assert math.isfinite(metrics["score_mean"])


def test_resume_replays_from_the_checkpoint(store, bigram_dir):
    from engine.runtime.jobs import execute, run_sync
    from engine.training.ppo import train_ppo
    from engine.inference.models import run_dir
    from engine.training.train_utils import list_checkpoints

    _dataset(store)
    cfg = _config(bigram_dir, max_steps=4, save_every=2)
    run = run_sync(store, "ppo", cfg)
    rid = run["id"]
    first = {(m["step"], m["name"]): m["value"]
             for m in store.get_metrics(rid, ["score_mean", "kl", "policy_loss"])}
    assert [s for s, _ in list_checkpoints(run_dir(rid))] == [2]
    # as if the process had died after step 4: resume continues from the step-2 checkpoint
    store.update_run(rid, status="interrupted")
    assert execute(store, rid, cfg, train_ppo, resume=True) == "succeeded"
    assert any("resumed from step 2" in r["message"] for r in store.get_log(rid))
    again = store.get_metrics(rid, ["score_mean", "kl", "policy_loss"])
    assert [m["step"] for m in again if m["name"] == "score_mean"] == [1, 2, 3, 4]
    for m in again:
        assert m["value"] == pytest.approx(first[(m["step"], m["name"])], abs=1e-4)


def test_cli_trains_ppo_headless(lab_home, bigram_dir, tmp_path):
    from storage import Store

    store = Store(lab_home / "lab.db")
    _dataset(store)
    cfg = asdict(_config(bigram_dir, max_steps=1, batch_size=2, minibatches=1))
    path = tmp_path / "ppo.json"
    path.write_text(json.dumps(cfg))
    env = dict(os.environ, RLHF_LAB_HOME=str(lab_home))
    out = subprocess.run([sys.executable, "-m", "engine", "train", "ppo", "--config", str(path),
                          "--set", "builtin_reward=target_length",
                          "--set", "reward_params.target=2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["status"] == "succeeded"
    assert set(result) >= {"first_score", "last_score", "final_kl", "seconds_per_step"}
    assert store.get_run(result["run_id"])["config"]["reward_params"] == {"target": 2}


def test_bad_configs_are_refused_with_clear_messages(store, bigram_dir):
    with pytest.raises(ValueError, match="multiple of minibatches"):
        PPOConfig(batch_size=6, minibatches=4).validate()
    with pytest.raises(ValueError, match="unknown parameter"):
        PPOConfig(builtin_reward="target_length", reward_params={"tgt": 3}).validate()
    _dataset(store)
    rid = store.create_run("reward", {"model": "embedded"})
    with pytest.raises(ValueError, match="not an SFT run"):
        PPOTrainer(_config(bigram_dir, sft_run=rid), store)


# ======================================================================================
# The page
# ======================================================================================
@pytest.fixture
def fresh_resources():
    import streamlit as st

    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def test_page_draws_every_quantity_with_its_formula_and_warns(store, fresh_resources):
    from streamlit.testing.v1 import AppTest

    from ui.i18n import t

    _dataset(store)
    _finished_run(store)
    at = AppTest.from_file(str(ROOT / "views" / "ppo.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    formulas = " ".join(x.value for x in at.latex)
    for piece in (r"\beta", r"\mathrm{clip}", r"\hat A_t", r"\delta_t", r"r_t(\theta)"):
        assert piece in formulas
    warnings = " ".join(w.value for w in at.warning)
    assert t("ppo.warn_kl", kl=12.0, limit=10.0)[:30] in warnings
    assert "0.50" in warnings  # the clip fraction warning
    assert len(at.get("vega_lite_chart")) >= 15
    table = at.dataframe[0].value
    assert list(table.iloc[:, 0]) == [3, 2, 1] and "Hi..." in set(table.iloc[:, -1])
    # the numbers before the texts: a long answer cannot push them off-screen
    assert list(table.columns[-2:]) == [t("ppo.col_prompt"), t("ppo.col_response")]
    # in French too
    at = AppTest.from_file(str(ROOT / "views" / "ppo.py"), default_timeout=60)
    at.session_state["lang"] = "fr"
    at.run()
    assert not at.exception, at.exception
    assert any("bande d'écrêtage" in c.value for c in at.caption)
    # a calm run draws no warning
    _finished_run(store, kl=1.0, clipfrac=0.05)
    at = AppTest.from_file(str(ROOT / "views" / "ppo.py"), default_timeout=60).run()
    assert not at.exception and not at.warning


def test_page_without_data_points_to_the_data_page(store, fresh_resources):
    from streamlit.testing.v1 import AppTest

    from ui.i18n import t

    from engine.data import SAMPLES_MARKER

    store.set_meta(SAMPLES_MARKER, "loaded")  # the samples were offered once, then deleted
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("views/ppo.py").run()  # (page links need the app's navigation)
    assert not at.exception, at.exception
    assert any(i.value == t("ppo.no_dataset") for i in at.info)
    assert any(t("ppo.no_runs") == c.value for c in at.caption)


def test_page_starts_a_run_with_the_chosen_reward(store, bigram_dir, fresh_resources):
    from streamlit.testing.v1 import AppTest

    from engine.runtime.jobs import get_manager

    _dataset(store)
    at = AppTest.from_file(str(ROOT / "views" / "ppo.py"), default_timeout=60)
    at.session_state["model_spec"] = str(bigram_dir)
    at.run()
    at.selectbox(key=widget_key("ppo_builtin")).set_value("contains_words").run()
    at.text_input(key="ppo_param_contains_words_words").set_value("yes, sure").run()
    at.number_input(key=field_key("ppo", "max_steps")).set_value(1)
    submit = [b for b in at.button if "Start" in str(b.label)]
    assert submit
    submit[0].click().run()
    assert not at.exception, at.exception
    runs = store.list_runs(stage="ppo")
    assert len(runs) == 1
    cfg = runs[0]["config"]
    assert cfg["builtin_reward"] == "contains_words"
    assert cfg["reward_params"] == {"words": ["yes", "sure"]}
    assert cfg["model"] == str(bigram_dir) and cfg["dataset"] == "prompts"
    assert cfg["max_steps"] == 1
    # the run it started ends well (a crash would say "failed"), scored by the chosen rule
    assert get_manager(store).wait(runs[0]["id"], 120) == "succeeded", \
        store.get_run(runs[0]["id"])["error"]
    # (the share of the two words an answer holds: the bigram model says one word)
    samples = store.get_samples(runs[0]["id"])
    assert samples
    for sample in samples:
        said = sample["response"].lower()
        assert sample["reward"] == ("yes" in said) * 0.5 + ("sure" in said) * 0.5


def test_packed_and_padded_passes_agree_with_gradients(store, bigram_dir):
    """The padding-free scoring/training pass gives the padded pass's log-probs, values,
    entropies and gradients (varied prompt and answer lengths, left-padded prompts)."""
    _dataset(store)
    sft_id = _fake_sft_run(store, bigram_dir)
    trainer = PPOTrainer(_config(bigram_dir, sft_run=sft_id, max_new_tokens=6), store)
    assert trainer.packing is True
    with torch.no_grad():
        trainer.value_head.linear.weight.normal_(0, 0.5)  # non-zero V(s)
    torch.manual_seed(3)
    ro = trainer.generate(PROMPTS)
    assert len(set(ro.mask.sum(1).tolist())) > 1 and len(set(ro.query_mask.sum(1).tolist())) > 1
    m = ro.mask.bool()
    results = {}
    for packing in (True, False):
        trainer.packing = packing
        trainer.optimizer.zero_grad(set_to_none=True)
        logp, v, ent = trainer.forward(ro.query, ro.query_mask, ro.response, ro.mask,
                                       values=True, entropy=True)
        (logp[m].sum() + v[m].sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in trainer.params])
        results[packing] = (logp, v, ent, grads)
    for a, b in zip(results[True], results[False]):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert results[True][3].abs().max() > 0
    assert torch.all(results[True][0][~m] == 0)  # nothing outside the answers


def test_sampling_pass_logprobs_are_a_full_pass(store, bigram_dir):
    """In fp32 the rollout's old log-probs, taken from the KV-cached sampling pass, are a
    full pass's (bf16 keeps them too: tests/test_rollout_reuse.py)."""
    _dataset(store)
    trainer = PPOTrainer(_config(bigram_dir, max_new_tokens=6), store)
    torch.manual_seed(0)
    ro = trainer.generate(PROMPTS)
    m = ro.mask.bool()
    with torch.no_grad():
        full = trainer.forward(ro.query, ro.query_mask, ro.response, ro.mask)[0]
    assert torch.allclose(ro.logp[m], full[m], atol=1e-4)


def test_page_defaults_follow_the_pipeline(store, bigram_dir, fresh_resources):
    """With a finished SFT run and a reward model, a new PPO run starts from the newest SFT
    run and uses the trained reward by default; without them, the base and a rule."""
    from streamlit.testing.v1 import AppTest

    _dataset(store)
    at = AppTest.from_file(str(ROOT / "views" / "ppo.py"), default_timeout=60)
    at.session_state["model_spec"] = str(bigram_dir)
    at.run()
    assert at.selectbox(key=widget_key("ppo_sft")).value is None
    assert at.radio(key=widget_key("ppo_reward_source")).value == "builtin"
    sft = _fake_sft_run(store, bigram_dir)
    rm = _fake_sft_run(store, bigram_dir)
    store.update_run(rm, stage="reward")
    at = AppTest.from_file(str(ROOT / "views" / "ppo.py"), default_timeout=60)
    at.session_state["model_spec"] = str(bigram_dir)
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key=widget_key("ppo_sft")).value == sft
    assert at.radio(key=widget_key("ppo_reward_source")).value == "model"
