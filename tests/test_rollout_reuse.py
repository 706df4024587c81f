"""No pass twice (issue 28): on every dtype the rollout's old log-probs and values come from
the sampling pass, and a reward model on the policy's base scores the rollout's own token
ids (the layout `encode_completion` gives the texts); the static KV cache samples from the
same distribution."""
from __future__ import annotations

import pytest
import torch

from engine.inference.chat import encode_completion, encode_prompt
from engine.training.ppo import PPOTrainer, Rollout
from engine.training.rl_rewards import rollout_reward_ids
from tests.rl_helpers import PROMPTS
from tests.rl_helpers import fake_sft_run as _fake_sft_run
from tests.rl_helpers import ppo_config as _config
from tests.rl_helpers import prompt_dataset as _dataset


def test_half_precision_rollouts_keep_the_sampling_pass_log_probs(store, bigram_dir):
    _dataset(store)
    trainer = PPOTrainer(_config(bigram_dir, max_new_tokens=6), store)
    trainer.policy.to(torch.bfloat16)
    torch.manual_seed(0)
    ro = trainer.generate(PROMPTS)
    assert ro.logp is not None and ro.values is not None and ro.logp.dtype == torch.float32
    calls = []
    forward = trainer.forward
    trainer.forward = lambda *a, **kw: calls.append(trainer.policy.active_adapter) or \
        forward(*a, **kw)
    with torch.no_grad():
        full, values, _ = forward(ro.query, ro.query_mask, ro.response, ro.mask, values=True)
        kept = ro.logp.clone()
        trainer.score(ro)
    # score() ran the reference pass only (adapters disabled), not the policy again
    assert len(calls) == 1 and torch.equal(ro.logp, kept)
    m = ro.mask.bool()
    # the cached bf16 pass is the full bf16 pass up to bf16 rounding
    assert float((ro.logp[m] - full[m]).abs().mean()) < 0.05
    assert torch.allclose(ro.values[m], values[m], atol=1e-2)


def test_a_shared_reward_model_scores_the_rollout_token_ids(store, bigram_dir):
    from engine.inference.models import adapter_dir
    from engine.training import reward as R

    _dataset(store)
    rid = _fake_sft_run(store, bigram_dir)
    store.update_run(rid, stage="reward")
    R.save_head(adapter_dir(rid) / R.HEAD_FILE, R.new_head(64, seed=3), {"mean": 0.5, "std": 2.0})
    trainer = PPOTrainer(_config(bigram_dir, reward_run=rid, max_steps=1), store)
    tok = trainer.tokenizer
    answers = ["Yes.", "No", "Sure, topic."]
    prompts = PROMPTS[:3]
    # a rollout holding these answers as the policy would have sampled them: the answer's
    # template tokens up to EOS (the first two), the third cut at the token limit (no EOS)
    rows = [encode_completion(tok, p, a, 512) for p, a in zip(prompts, answers)]
    resp = [r.input_ids[len(encode_prompt(tok, p)):] for r, p in zip(rows, prompts)]
    resp[2] = resp[2][:-1]
    query, qmask = trainer.encode(prompts)
    T = max(map(len, resp))
    response = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(resp):
        response[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    ro = Rollout(prompts, query, qmask, response, mask, torch.tensor([True, True, False]),
                 answers)
    assert rollout_reward_ids(ro, tok.eos_token_id, 512) == [r.input_ids for r in rows]
    called = []
    trainer.scorer.score = lambda *a: called.append(a)   # the text path must not run
    trainer.score(ro)
    assert not called
    want = R.RewardScorer(store, rid, device="cpu").score(prompts, answers)
    assert ro.raw_scores.tolist() == pytest.approx(want, abs=1e-5)
    # cut to the reward model's max_length as encode_completion cuts
    assert rollout_reward_ids(ro, tok.eos_token_id, 12) == \
        [encode_completion(tok, p, a, 12).input_ids for p, a in zip(prompts, answers)]


def test_static_cache_samples_with_the_log_probs_of_a_forward_pass(store, bigram_dir):
    from engine.inference.generate import sample_groups
    from engine.objectives import logprobs_from_logits

    _dataset(store)
    trainer = PPOTrainer(_config(bigram_dir, max_new_tokens=5), store)
    query, qmask = trainer.encode(PROMPTS[:3])
    G, tok = 2, trainer.tokenizer
    torch.manual_seed(0)
    with torch.no_grad():
        tokens, logp = sample_groups(trainer.policy, query, qmask, G, max_new_tokens=5,
                                     temperature=0.8, top_p=1.0, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id, decode_cache="static")
        assert tokens.shape[0] == 3 * G and logp.shape == tokens.shape
        q, qm = query.repeat_interleave(G, 0), qmask.repeat_interleave(G, 0)
        ids, attn = torch.cat([q, tokens], 1), torch.cat([qm, torch.ones_like(tokens)], 1)
        logits = trainer.policy(input_ids=ids, attention_mask=attn,
                                position_ids=(attn.cumsum(1) - 1).clamp(min=0),
                                use_cache=False).logits[:, q.shape[1] - 1:-1]
    # up to the first EOS of each row (generate pads after it)
    ended = (tokens == tok.eos_token_id).long().cumsum(1)
    keep = (ended - (tokens == tok.eos_token_id).long()) == 0
    want = logprobs_from_logits(logits, tokens, 0.8)
    assert torch.allclose(logp[keep], want[keep], atol=1e-4)
    with pytest.raises(ValueError, match="decode_cache"):
        from engine.inference.generate import generation_cache_options
        generation_cache_options("paged", "cpu")
