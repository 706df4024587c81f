"""Finished runs written straight into the store, as their stages leave them (metrics,
samples, summary): for the tests of pages that show results, without training anything."""
from __future__ import annotations


def ppo_run(store, kl=12.0, clipfrac=0.5) -> int:
    """A finished PPO run as the stage leaves it: 3 steps of every metric, samples, summary."""
    from dataclasses import asdict

    from engine.training.ppo import RATIO_HIST_EDGES, PPOConfig

    cfg = asdict(PPOConfig(dataset="prompts"))
    rid = store.create_run("ppo", cfg, name="demo")
    store.claim_run(rid)
    for step in (1, 2, 3):
        values = {"score_mean": 0.2 * step, "score_std": 0.1, "non_score_reward": -0.1,
                  "rlhf_reward": 0.2 * step - 0.1, "kl": kl * step / 3, "beta": 0.05,
                  "policy_loss": -0.01, "value_loss": 0.1, "loss": 0.0, "clipfrac": clipfrac,
                  "approx_kl": 0.01, "ratio_mean": 1.0, "ratio_min": 0.7, "ratio_max": 1.4,
                  "entropy": 1.2, "response_length": 10.0, "eos_fraction": 0.5,
                  "explained_variance": 0.3, "advantage_std_raw": 0.5, "value_mean": 0.1,
                  "return_mean": 0.2, "time_generate": 1.0, "time_score": 0.5,
                  "time_train": 2.0, "time_step": 3.5}
        for k in range(len(RATIO_HIST_EDGES) - 1):
            values[f"ratio_hist_{k:02d}"] = float(max(0, 10 - abs(k - 10) * 3))
        store.log_metrics(rid, step, values)
        store.add_samples(rid, step, [{"prompt": "Say hi.", "response": f"Hi{'.' * step}",
                                       "reward": 1.0, "kl": 0.1 * step, "length": 3,
                                       "eos": True}])
    store.finish_run(rid, "succeeded", summary={"first_score": 0.2, "last_score": 0.6})
    return rid


def reward_run_with_eval_pairs(store, margins: list[float], norm_mean: float) -> int:
    """A finished reward run as the stage leaves it: summary and last-step eval pairs."""
    rid = store.create_run("reward", {"model": "embedded"}, status="succeeded")
    store.update_run(rid, summary={"eval_accuracy": sum(m > 0 for m in margins) / len(margins),
                                   "eval_margin": sum(margins) / len(margins),
                                   "norm_mean": norm_mean, "norm_std": 0.938,
                                   "norm_source": "train"})
    store.add_samples(rid, 5, [{
        "prompt": f"prompt {i}", "response": f"chosen {i}", "kind": "eval_pair",
        "rejected": f"rejected {i}", "chosen_reward": m, "rejected_reward": 0.0, "margin": m,
        "correct": m > 0, "chosen_length": 3 + i, "rejected_length": 4}
        for i, m in enumerate(margins)])
    return rid


def sft_run(store, model_dir, dataset: str = "sample-sft") -> int:
    """A finished SFT run: a real LoRA adapter on `model_dir` (Compare and Export can use
    it) with the losses, samples and summary the stage stores."""
    from tests.conftest import make_adapter_run

    rid = make_adapter_run(store, model_dir, dataset=dataset)
    store.update_run(rid, config={"model": str(model_dir), "dataset": dataset, "max_steps": 2})
    for step in (1, 2):
        store.log_metrics(rid, step, {"train_loss": 3.0 - step, "learning_rate": 1e-4,
                                      "grad_norm": 0.5, "tokens_per_s": 900.0})
    store.log_metrics(rid, 0, {"eval_loss": 2.5})
    store.log_metrics(rid, 2, {"eval_loss": 1.5})
    store.add_samples(rid, 2, [{"prompt": "Bonjour ?", "response": "Bonjour !"}])
    store.update_run(rid, summary={"steps": 2, "final_train_loss": 1.0, "eval_loss_before": 2.5,
                                   "eval_loss_after": 1.5, "tokens_per_s": 900.0})
    return rid
