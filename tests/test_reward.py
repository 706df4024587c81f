"""Reward model: the pairwise loss by hand, the last-token head, training on a preference the
tiny model can learn, the scorer API (shared base, private copy, PPO-style adapter on a
shared base), resume from a checkpoint, the CLI, and the page."""
from __future__ import annotations

import json
import random
import threading

import pytest
import torch
from torch import nn

from engine.runtime.jobs import execute, get_manager, run_sync
from engine.training.reward import (HEAD_FILE, RewardConfig, clear_scorers, last_token_reward,
                                    load_reward_head, load_scorer, reward_adapter_path,
                                    score_with_model, train_reward)
from engine.schema import from_dict
from tests.conftest import ROOT
from tests.finished_runs import reward_run_with_eval_pairs as _reward_run_with_eval_pairs

WORDS = ["it", "is", "very", "nice", "and", "good", "old", "new", "small", "warm"]
TOPICS = ["cats", "the sea", "bread", "rain", "music", "trains", "Paris", "winter", "tea",
          "books", "stars", "gardens", "rivers", "chess", "bees", "snow"]


def synthetic_preferences(store, name: str = "syn", n: int = 96) -> None:
    """Chosen answers end with a full stop, rejected ones with "!" (same length in tokens)."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        text = f"I think {topic} {body}"
        rows.append({"prompt": f"Tell me about {topic}.", "chosen": text + ".",
                     "rejected": text + "!", "split": "eval" if i % 3 == 0 else "train"})
    store.create_dataset(name, "preference")
    store.add_rows(name, rows)


def tiny_config(tiny_model_dir, **kw) -> dict:
    cfg = dict(model=str(tiny_model_dir), dataset="syn", max_steps=15, batch_size=8,
               learning_rate=2e-3, head_lr=1e-2, max_length=64, save_every=0, normalize_samples=64)
    cfg.update(kw)
    return cfg


# -- the head (the pairwise loss and its statistics: tests/test_objectives.py) ----------------
def test_last_token_reward_reads_the_last_non_pad_token():
    hidden = torch.arange(3 * 4 * 2, dtype=torch.float32).view(3, 4, 2)
    mask = torch.tensor([[1, 1, 1, 0],   # right padded: position 2
                         [1, 1, 1, 1],   # no padding: position 3
                         [0, 0, 1, 1]])  # left padded: position 3
    head = nn.Linear(2, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 10.0]]))
        head.bias.fill_(0.5)
    rewards = last_token_reward(hidden, mask, head)
    expected = [hidden[0, 2] @ torch.tensor([1.0, 10.0]) + 0.5,
                hidden[1, 3] @ torch.tensor([1.0, 10.0]) + 0.5,
                hidden[2, 3] @ torch.tensor([1.0, 10.0]) + 0.5]
    assert rewards.shape == (3,)
    assert rewards.tolist() == pytest.approx([float(e) for e in expected])


# -- training, saving, scoring ----------------------------------------------------------------
def test_reward_model_learns_a_synthetic_preference_and_scorer_agrees(store, tiny_model_dir):
    from engine.inference.models import add_lora, inference_cache, load_adapter, load_base

    synthetic_preferences(store)
    run = run_sync(store, "reward", tiny_config(tiny_model_dir))
    assert run["status"] == "succeeded", run["error"]
    summary = run["summary"]
    assert summary["eval_accuracy"] >= 0.8 and summary["eval_pairs"] == 32
    assert summary["train_pairs"] == 64 and summary["steps"] == 15
    assert summary["seconds_per_step"] > 0 and summary["norm_source"] == "train"
    rid = run["id"]

    # every step logs the loss, accuracy, margin and mean rewards
    names = set(store.metric_names(rid))
    assert {"loss", "accuracy", "margin", "reward_chosen", "reward_rejected",
            "eval_accuracy"} <= names
    assert [m["step"] for m in store.get_metrics(rid, ["loss"])] == list(range(1, 16))

    # saved: the adapter flat in PEFT layout, with the head beside it; no checkpoints left
    folder = reward_adapter_path(rid)
    assert (folder / "adapter_config.json").exists()
    assert (folder / "adapter_model.safetensors").exists() and (folder / HEAD_FILE).exists()
    assert not [p for p in folder.iterdir() if p.is_dir()]
    head, stats = load_reward_head(rid)
    assert head.weight.shape == (1, 64) and stats["std"] > 0

    # the eval rewards are stored for the charts
    rows = [s for s in store.get_samples(rid) if s["extra"].get("kind") == "eval_pair"]
    assert len(rows) == 32
    extra = rows[0]["extra"]
    assert {"rejected", "chosen_reward", "rejected_reward", "margin", "chosen_length",
            "rejected_length"} <= set(extra)
    assert summary["eval_accuracy"] == pytest.approx(
        sum(r["extra"]["correct"] for r in rows) / 32)

    # the public scorer (shared inference base) reproduces the stored eval rewards
    clear_scorers()
    inference_cache.clear()
    scorer = load_scorer(store, rid)
    assert load_scorer(store, rid) is scorer  # cached
    prompts = [r["prompt"] for r in rows]
    chosen = scorer.score(prompts, [r["response"] for r in rows])
    rejected = scorer.score(prompts, [r["extra"]["rejected"] for r in rows])
    assert chosen == pytest.approx([r["extra"]["chosen_reward"] for r in rows], abs=1e-3)
    assert rejected == pytest.approx([r["extra"]["rejected_reward"] for r in rows], abs=1e-3)
    assert [c > r for c, r in zip(chosen, rejected)] == [r["extra"]["correct"] for r in rows]
    ranked = scorer.rank(prompts[0], [rows[0]["extra"]["rejected"], rows[0]["response"]])
    assert ranked[0][0] == rows[0]["response"]

    # normalised: mean 0, std 1 on the training responses the statistics came from
    train = store.list_rows("syn", split="train")[:32]
    norm = scorer.score([r["prompt"] for r in train for _ in (0, 1)],
                        [x for r in train for x in (r["chosen"], r["rejected"])])
    t = torch.tensor(norm, dtype=torch.float64)
    assert float(t.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(t.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)

    # a private copy on an explicit device gives the same scores
    private = load_scorer(store, rid, device="cpu")
    assert private is not scorer
    assert private.score(prompts[:4], [r["response"] for r in rows[:4]]) == \
        pytest.approx(chosen[:4], abs=1e-4)

    # PPO-style: the reward adapter on a base that already holds a trainable policy adapter
    base = load_base(str(tiny_model_dir), device="cpu")
    model = add_lora(base.model, adapter_name="policy")
    model = load_adapter(model, folder, adapter_name="reward")
    model.set_adapter("policy")
    scores = score_with_model(model, head, base.tokenizer, prompts[:4],
                              [r["response"] for r in rows[:4]], stats=stats,
                              adapter_name="reward")
    assert scores == pytest.approx(chosen[:4], abs=1e-4)
    assert model.active_adapter == "policy"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".policy." in n for n in trainable)
    inference_cache.clear()
    clear_scorers()
    _page_shows_the_trained_model(store, tiny_model_dir, run)


def _page_shows_the_trained_model(store, tiny_model_dir, run):
    """The page on the run just trained: its numbers, its misranked pairs (or a word that
    there are none) and the tester, which ranks a full-stop answer above the same one
    with "!"; in French too."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from engine.inference.models import inference_cache
    from ui.i18n import t

    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(ROOT / "views" / "reward.py"), default_timeout=90)
        at.session_state["model_spec"] = str(tiny_model_dir)
        at.run()
        assert not at.exception, at.exception
        metrics = {m.label: m.value for m in at.metric}
        assert metrics[t("reward.eval_accuracy")] == f"{run['summary']['eval_accuracy']:.1%}"
        assert t("reward.length_corr") in metrics
        assert any(t("reward.worst_title") in m.value for m in at.markdown)
        pairs = [x for x in store.get_samples(run["id"]) if x["extra"].get("kind") == "eval_pair"]
        wrong = sorted(x["extra"]["margin"] for x in pairs if not x["extra"]["correct"])
        shown = [d.value for d in at.dataframe if "rejected_reward" in d.value.columns]
        if wrong:   # the stored pairs decide which of the two the page must show
            assert list(shown[0]["margin"]) == pytest.approx(wrong)
        else:
            assert not shown and any(s.value == t("reward.worst_none") for s in at.success)

        at.text_area(key="reward_tester_prompt").input("Tell me about cats.")
        at.text_area(key="reward_tester_answers").input(
            "I think cats is nice!\nI think cats is nice.")
        at.button(key="reward_tester_go").click().run()
        assert not at.exception, at.exception
        job = at.session_state["reward_tester_job"]  # a light job scores them, not the script
        assert store.get_run(job)["stage"] == "score_text"
        assert get_manager(store).wait(job, 120) == "succeeded", store.get_run(job)["error"]
        at.run()
        assert not at.exception, at.exception
        ranked = at.dataframe[-1].value
        assert list(ranked["answer"]) == ["I think cats is nice.", "I think cats is nice!"]
        assert list(ranked["rank"]) == [1, 2]

        at.session_state["lang"] = "fr"
        at.run()
        assert not at.exception, at.exception
        assert any(m.label == t("reward.eval_accuracy", lang="fr") for m in at.metric)
    finally:
        inference_cache.clear()
        clear_scorers()
        st.cache_resource.clear()


def test_normalisation_on_an_sft_runs_own_answers(store, tiny_model_dir):
    from engine.inference.models import add_lora, adapter_dir, load_base

    synthetic_preferences(store)
    base = load_base(str(tiny_model_dir), device="cpu")
    sft = store.create_run("sft", {"model": str(tiny_model_dir)}, status="succeeded")
    add_lora(base.model).save_pretrained(adapter_dir(sft))
    run = run_sync(store, "reward", tiny_config(
        tiny_model_dir, max_steps=2, max_eval_pairs=4, normalize_sft_run=sft,
        normalize_samples=4, normalize_max_new_tokens=6))
    assert run["status"] == "succeeded", run["error"]
    assert run["summary"]["norm_source"] == f"sft#{sft}"
    folder = reward_adapter_path(run["id"])
    assert not [p for p in folder.iterdir() if p.is_dir()]  # only the reward adapter saved
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 16
    assert load_reward_head(run["id"])[1]["std"] > 0


class _CancelAfter(threading.Event):
    """A cancel flag that turns itself on after `n` checks (a user pressing Cancel)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0 or super().is_set()


def test_cancel_keeps_a_checkpoint_and_resume_replays_the_same_steps(store, tiny_model_dir):
    synthetic_preferences(store)
    cfg = from_dict(RewardConfig, {**tiny_config(tiny_model_dir, max_steps=6, save_every=2,
                                                 max_eval_pairs=8, normalize=False),
                                   "lora": {"r": 4, "alpha": 8, "dropout": 0.05}})
    rid = store.create_run("reward", {})
    # checks at the start of steps 1..4: cancelled before step 4, after step 3's metrics
    status = execute(store, rid, cfg, train_reward, cancel_event=_CancelAfter(3))
    assert status == "cancelled"
    before = {m["step"]: m["value"] for m in store.get_metrics(rid, ["loss"])}
    assert sorted(before) == [1, 2, 3]
    assert (store.get_run(rid)["step"]) == 3
    status = execute(store, rid, cfg, train_reward, resume=True)
    assert status == "succeeded", store.get_run(rid)["error"]
    assert any("resumed from the checkpoint at step 2" in r["message"]
               for r in store.get_log(rid))
    after = store.get_metrics(rid, ["loss"])
    assert [m["step"] for m in after] == [1, 2, 3, 4, 5, 6]  # step 3 redone, not duplicated
    assert {m["step"]: m["value"] for m in after}[3] == pytest.approx(before[3], rel=1e-4)
    assert (reward_adapter_path(rid) / HEAD_FILE).exists()


def test_cli_train_reward_reports_run_and_eval_accuracy(store, tiny_model_dir, tmp_path, capsys):
    from engine.__main__ import main

    synthetic_preferences(store)
    config = tmp_path / "reward.json"
    config.write_text(json.dumps(tiny_config(tiny_model_dir, max_eval_pairs=8)))
    code = main(["--db", str(store.path), "train", "reward", "--config", str(config),
                 "--set", "max_steps=3", "--set", "lora.r=4"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["status"] == "succeeded" and out["steps"] == 3
    run = store.get_run(out["run_id"])
    assert run["config"]["lora"]["r"] == 4
    pairs = [x for x in store.get_samples(run["id"]) if x["extra"].get("kind") == "eval_pair"]
    assert len(pairs) == 8
    assert out["eval_accuracy"] == run["summary"]["eval_accuracy"] == pytest.approx(
        sum(x["extra"]["correct"] for x in pairs) / 8)


# -- the page ---------------------------------------------------------------------------------
@pytest.fixture
def fresh_resources():
    import streamlit as st

    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def _by_label(elements, label):
    found = [e for e in elements if e.label == label]
    assert found, f"no element labelled {label!r}"
    return found[0]


def test_page_without_data_points_to_the_data_page(store, fresh_resources):
    from streamlit.testing.v1 import AppTest

    from engine.data import SAMPLES_MARKER

    store.set_meta(SAMPLES_MARKER, "loaded")  # the samples were offered once, then deleted
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("views/reward.py").run()
    assert not at.exception, at.exception
    from ui.i18n import t

    assert any(t("reward.no_dataset") in i.value for i in at.info)
    assert any(t("reward.tester_none") in i.value for i in at.info)


def test_page_starts_a_run_and_shows_it(store, tiny_model_dir, fresh_resources):
    """The form starts a run with its values (a short one: what a trained model shows is
    checked on the 15-step run above); the page then shows the run's stored accuracy."""
    from streamlit.testing.v1 import AppTest

    from ui.forms import field_key
    from ui.i18n import t

    synthetic_preferences(store)
    # the page on its own (no sidebar): the model in use is read from the session
    at = AppTest.from_file(str(ROOT / "views" / "reward.py"), default_timeout=90)
    at.session_state["model_spec"] = str(tiny_model_dir)
    at.run()
    assert not at.exception, at.exception
    for name, value in (("max_steps", 2), ("batch_size", 8), ("learning_rate", 2e-3),
                        ("head_lr", 1e-2), ("max_length", 64)):
        at.number_input(key=field_key("reward", name)).set_value(value)
    at.button(key="start.reward").click().run()
    assert not at.exception, at.exception
    runs = store.list_runs(stage="reward")
    assert len(runs) == 1 and runs[0]["config"]["model"] == str(tiny_model_dir)
    cfg = runs[0]["config"]
    assert (cfg["max_steps"], cfg["batch_size"], cfg["max_length"]) == (2, 8, 64)
    assert (cfg["learning_rate"], cfg["head_lr"]) == (2e-3, 1e-2)
    assert get_manager(store).wait(runs[0]["id"], 180) == "succeeded", \
        store.get_run(runs[0]["id"])["error"]
    at.run()
    assert not at.exception, at.exception
    summary = store.get_run(runs[0]["id"])["summary"]
    assert {m.label: m.value for m in at.metric}[t("reward.eval_accuracy")] == \
        f"{summary['eval_accuracy']:.1%}"


def test_an_sft_dataset_is_refused_naming_the_kind(store, tiny_model_dir):
    from engine.runtime.jobs import run_sync

    store.create_dataset("answers", "sft")
    store.add_rows("answers", [{"prompt": "p", "response": "r"}])
    run = run_sync(store, "reward", {"model": str(tiny_model_dir), "dataset": "answers"})
    assert run["status"] == "failed"
    assert "'answers' is a sft dataset; a reward model needs a preference dataset" in run["error"]


def test_page_lists_the_misranked_pairs_and_folds_the_mean_sign(store, fresh_resources):
    from streamlit.testing.v1 import AppTest

    from ui.common import widget_key
    from ui.i18n import t

    good = _reward_run_with_eval_pairs(store, [0.4, 1.0, 2.0], norm_mean=0.25)
    mixed = _reward_run_with_eval_pairs(store, [2.0, 0.5, 0.1, -0.3, 0.0, -1.2], norm_mean=-1.501)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("views/reward.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="reward_run_select").value == mixed
    captions = " ".join(c.value for c in at.caption)
    assert "r̂ = (r + 1.501) / 0.938" in captions and "− -" not in captions
    # only the pairs it gets wrong (r⁺ ≤ r⁻), the most wrong first; not the lowest margins
    wrong = next(d.value for d in at.dataframe if "rejected_reward" in d.value.columns)
    assert list(wrong["margin"]) == [-1.2, -0.3, 0.0]
    assert "3 of 6 evaluation pairs are misranked." in captions
    assert "r⁺ ≤ r⁻" in captions

    at.selectbox(key="reward_run_select").set_value(good).run()
    assert not at.exception, at.exception
    assert "r̂ = (r − 0.250) / 0.938" in " ".join(c.value for c in at.caption)
    assert any(s.value == t("reward.worst_none") for s in at.success)
    assert not any("rejected_reward" in d.value.columns for d in at.dataframe)
    assert at.selectbox(key=widget_key("reward_tester_run")).value is not None
