"""Best-of-n (issue 16, recipe 1a): the estimator against brute force over every n-subset,
KL_bon by hand, bad settings, and the stage on the hand-set bigram model of tests/rl_helpers.py
with a reward-model proxy and a rule as gold."""
from __future__ import annotations

import itertools
import random

import pytest

from engine import objectives as O
from engine.schema import ConfigError
from engine.training.best_of_n import BestOfNConfig, best_of_n_curve
from tests.rl_helpers import HELDOUT, PROMPTS, reward_run


def brute_force(proxy: list[float], gold: list[float], n: int) -> tuple[float, float]:
    """The mean over every n-subset of the proxy and gold score of the subset's best by the
    proxy (ties: the mean gold of the subset's tied best, a fair coin among them)."""
    ps, gs = [], []
    for subset in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in subset)
        best = [i for i in subset if proxy[i] == top]
        ps.append(top)
        gs.append(sum(gold[i] for i in best) / len(best))
    return sum(ps) / len(ps), sum(gs) / len(gs)


def test_estimator_by_hand():
    # N = 3, n = 2: subsets {0,1} -> 0, {0,2} -> 0, {1,2} -> 2
    p, g = O.best_of_n_estimate([3.0, 1.0, 2.0], [1.0, 0.0, 5.0], 2)
    assert p == pytest.approx((3 + 3 + 2) / 3) and g == pytest.approx((1 + 1 + 5) / 3)
    # n = 1 is the plain mean, n = N the proxy's best
    assert O.best_of_n_estimate([3.0, 1.0, 2.0], [1.0, 0.0, 5.0], 1) == \
        pytest.approx((2.0, 2.0))
    assert O.best_of_n_estimate([3.0, 1.0, 2.0], [1.0, 0.0, 5.0], 3) == pytest.approx((3.0, 1.0))
    # the weights C(N−k, n−1)/C(N, n): N = 4, n = 2 -> 3/6, 2/6, 1/6, 0
    assert O.best_of_n_weights(4, 2) == pytest.approx([0.5, 1 / 3, 1 / 6, 0.0])
    with pytest.raises(ValueError):
        O.best_of_n_weights(4, 5)


@pytest.mark.parametrize("N", [1, 2, 5, 8])
def test_estimator_matches_every_subset(N):
    rng = random.Random(N)
    for trial in range(5):
        proxy = [rng.gauss(0, 1) for _ in range(N)]
        if trial % 2:  # ties on the proxy, as a 0/1 rule gives
            proxy = [float(rng.randint(0, 2)) for _ in range(N)]
        gold = [rng.gauss(0, 1) for _ in range(N)]
        for n in range(1, N + 1):
            assert sum(O.best_of_n_weights(N, n)) == pytest.approx(1.0)
            assert O.best_of_n_estimate(proxy, gold, n) == pytest.approx(
                brute_force(proxy, gold, n), abs=1e-9), (proxy, gold, n)


def test_kl_of_best_of_n_and_the_curve():
    # log n − (n − 1)/n worked out: n = 2: 0.693147 − 0.5; n = 4: 1.386294 − 0.75;
    # n = 64: 4.158883 − 0.984375
    assert O.kl_best_of_n(1) == 0.0
    assert O.kl_best_of_n(2) == pytest.approx(0.1931472, abs=1e-7)
    assert O.kl_best_of_n(4) == pytest.approx(0.6362944, abs=1e-7)
    assert O.kl_best_of_n(64) == pytest.approx(3.1745081, abs=1e-7)
    proxy = [[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 0.0, 0.0]]
    gold = [[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]]
    curve = best_of_n_curve(proxy, gold, 4)
    assert [r["bon_n"] for r in curve] == [1, 2, 4]
    assert [r["kl_bon"] for r in curve] == pytest.approx([0.0, 0.1931472, 0.6362944], abs=1e-7)
    for r in curve:
        n = int(r["bon_n"])
        want = [brute_force(p, g, n) for p, g in zip(proxy, gold)]
        assert r["bon_proxy_score"] == pytest.approx(sum(w[0] for w in want) / 2)
        assert r["bon_gold_score"] == pytest.approx(sum(w[1] for w in want) / 2)
    assert "bon_gold_score" not in best_of_n_curve(proxy, None, 4)[0]


@pytest.mark.parametrize("changes, field", [
    ({"n_max": 12}, "n_max"),
    ({"n_max": 0}, "n_max"),
    ({"gold_reward": "target_length", "gold_reward_run": 3}, "gold_reward_run"),
    ({"gold_params": {"target": 3}}, "gold_params"),
    ({"builtin_reward": "target_length", "reward_params": {"tgt": 3}}, "reward_params"),
    ({"split": "test"}, "split"),
])
def test_bad_settings_are_refused_with_the_field_named(changes, field):
    with pytest.raises(ConfigError) as err:
        BestOfNConfig(**changes).validate()
    assert err.value.field == field
    BestOfNConfig().validate()


def test_best_of_n_stage_on_the_tiny_model(store, bigram_dir):
    from engine.runtime.jobs import run_sync

    store.create_dataset("split-prompts", "preference")
    store.add_rows("split-prompts", [{"prompt": p, "chosen": "Yes.", "rejected": "No",
                                      "split": "train"} for p in PROMPTS]
                   + [{"prompt": p, "chosen": "Yes.", "rejected": "No", "split": "eval"}
                      for p in HELDOUT])
    proxy = reward_run(store, bigram_dir, 5)
    cfg = BestOfNConfig(model=str(bigram_dir), dataset="split-prompts", num_prompts=3,
                        n_max=4, max_new_tokens=4, reward_run=proxy,
                        gold_reward="ends_with_period")
    run = run_sync(store, "best_of_n", cfg)
    assert run["status"] == "succeeded", run["error"]
    rid = run["id"]
    by = {}
    for m in store.get_metrics(rid):
        by.setdefault(m["name"], {})[m["step"]] = m["value"]
    assert sorted(by["bon_n"]) == [1, 2, 4] and by["bon_n"] == {1: 1, 2: 2, 4: 4}
    assert by["kl_bon"] == pytest.approx({1: 0.0, 2: 0.1931472, 4: 0.6362944}, abs=1e-7)
    # standard errors over the 3 prompts at every n; the gap of n_max to itself is 0
    assert set(by["bon_gold_score_se"]) == set(by["bon_proxy_score_se"]) == {1, 2, 4}
    assert by["bon_gold_gap_se"][4] == 0.0
    proxies = [by["bon_proxy_score"][n] for n in (1, 2, 4)]
    assert proxies == sorted(proxies)  # best-of-n by the proxy never lowers its mean
    # a 0/1 gold rule on 3 prompts × 4 answers: at n = 1 the plain mean of 12 zeros and ones
    # (a multiple of 1/12); at n = 2 each prompt's estimate weighs its answers by
    # (1/2, 1/3, 1/6, 0), a multiple of 1/6, so their mean is a multiple of 1/18
    for n, parts in ((1, 12), (2, 18)):
        g = by["bon_gold_score"][n] * parts
        assert 0 <= round(g) <= parts and g == pytest.approx(round(g), abs=1e-6), (n, g)
    # the samples: one answer per held-out prompt at n = 1, the proxy's pick of 4 at n = 4
    samples = store.get_samples(rid)
    assert {s["step"] for s in samples} == {1, 4}
    picks = [s for s in samples if s["step"] == 4]
    assert {s["prompt"] for s in picks} <= set(HELDOUT) and len(picks) == 3
    # n = N: the expected scores are those of each prompt's best answer (no ties: a model)
    assert by["bon_proxy_score"][4] == pytest.approx(sum(s["reward"] for s in picks) / 3)
    assert by["bon_gold_score"][4] == pytest.approx(sum(s["extra"]["gold"] for s in picks) / 3)
    for s in picks:
        assert s["extra"]["gold"] == (1.0 if s["response"].endswith(".") else 0.0)
    summary = run["summary"]
    assert summary["n_max"] == 4 and summary["last_proxy"] == proxies[-1]
    assert summary["best_gold"] == max(by["bon_gold_score"].values())
    assert by["bon_gold_score"][summary["best_gold_n"]] == summary["best_gold"]
    assert summary["gold"] and summary["proxy"] == f"reward#{proxy}"
