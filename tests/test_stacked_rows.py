"""Stacked padding-free passes (issue 28): the rows of a pass through the model in one call
(engine.inference.packing.stack_rows, the GPU path) give the values and gradients of the
same rows run one call each (the CPU path), on a real tiny Llama with a LoRA adapter."""
from __future__ import annotations

import torch

from engine.inference.logprobs import answer_rows, backward_by_rows, gather_rows, sequence_rows
from engine.inference.logprobs import Scored
from engine.inference.packing import (causal_blocks, packed_outputs, stack_groups, stack_rows,
                                      use_stacked)
from engine.objectives import grpo_loss
from tests.test_logprobs import _prompts_and_answers
from tests.test_packing import _lora_model

# float32 on the CPU: the stacked call adds padded keys that are masked out, so only the
# order of float additions differs
ATOL = 1e-5


def test_stack_rows_pads_each_row_and_lets_padding_see_itself_only():
    ids = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    pos = [torch.tensor([0, 1, 0]), torch.tensor([0])]
    masks = [causal_blocks([2, 1]), causal_blocks([1])]
    out_ids, out_pos, mask = stack_rows(ids, pos, masks, pad_id=0)
    assert out_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out_pos.tolist() == [[0, 1, 0], [0, 0, 0]]
    assert mask.shape == (2, 1, 3, 3)
    assert mask[0, 0].tolist() == [[True, False, False], [True, True, False],
                                   [False, False, True]]
    assert mask[1, 0].tolist() == [[True, False, False], [False, True, False],
                                   [False, False, True]]
    # budget: rows × longest row
    assert stack_groups([4, 4, 4, 9], True, budget=12) == [[0, 1, 2], [3]]
    assert stack_groups([4, 4], False) == [[0], [1]]


def test_use_stacked_follows_the_device_unless_forced(monkeypatch):
    monkeypatch.delenv("RLHF_LAB_STACK_ROWS", raising=False)
    assert use_stacked("cpu") is False
    assert use_stacked(torch.device("cuda", 0)) is True
    monkeypatch.setenv("RLHF_LAB_STACK_ROWS", "1")
    assert use_stacked("cpu") is True
    monkeypatch.setenv("RLHF_LAB_STACK_ROWS", "0")
    assert use_stacked("cuda") is False


def test_stacked_answer_rows_equal_one_call_a_row_values_and_gradients(store, tiny_model_dir):
    model = _lora_model(store, tiny_model_dir)
    params = [p.requires_grad_(True) for n, p in model.named_parameters() if "lora_" in n]
    query, qmask, response, mask = _prompts_and_answers()
    T, old = 0.7, torch.randn(response.shape) * 0.1 * mask

    def loss_fn(lp):   # GRPO's loss: a sum over tokens over a constant
        return grpo_loss(lp, old, old - 0.1 * mask, torch.linspace(-1, 1, len(mask)),
                         mask.float(), 0.2, 0.04)[0]

    got = {}
    for stacked in (False, True):
        with torch.no_grad():
            # rows of ≤ 20 tokens: one group per row, two rows of different lengths
            rows = answer_rows(model, query, qmask, response, mask, T, 20, entropy=True,
                               hidden=True, stacked=stacked)
            calls = list(rows)
            logp, _, ent = gather_rows(iter(calls), mask)
        assert len(calls) == (1 if stacked else 2)
        for p in params:
            p.grad = None
        rows = answer_rows(model, query, qmask, response, mask, T, 20, stacked=stacked)
        values = backward_by_rows(((m, lp) for m, lp, _, _ in rows), old, loss_fn)
        got[stacked] = (logp, ent, values, [p.grad.clone() for p in params],
                        torch.cat([h for *_, h in calls]).abs().sum())
    (lp0, e0, v0, g0, h0), (lp1, e1, v1, g1, h1) = got[False], got[True]
    assert torch.allclose(lp1, lp0, atol=ATOL) and torch.allclose(e1, e0, atol=ATOL)
    assert torch.allclose(v1, v0, atol=ATOL)
    assert torch.allclose(h1, h0, rtol=1e-5)
    for a, b in zip(g1, g0):   # relative to each gradient's scale
        assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())


def test_stacked_sequence_rows_and_packed_body_equal_one_call_a_row(store, tiny_model_dir):
    model = _lora_model(store, tiny_model_dir)
    gen = torch.Generator().manual_seed(3)
    seqs = [torch.randint(3, 1000, (n,), generator=gen) for n in (9, 4, 12, 7, 5)]
    # DPO's layout: sequences 0/2 and 1/3 share a prompt of 3 tokens
    seqs[2][:3] = seqs[0][:3]
    seqs[3][:3] = seqs[1][:3]
    scored = [Scored(s, torch.arange(3, len(s))) for s in seqs]
    with torch.no_grad():
        sums = {}
        for stacked in (False, True):
            out = torch.zeros(len(seqs))
            for members, values in sequence_rows(model, scored, [0, 1, 0, 1, 2], 16,
                                                 stacked=stacked):
                out[members] = values
            sums[stacked] = out
        assert torch.allclose(sums[True], sums[False], atol=ATOL)
        body = model.get_base_model().model
        last = [torch.tensor([len(s) - 1]) for s in seqs]
        hidden = {}
        for stacked in (False, True):
            out = torch.zeros(len(seqs), body.config.hidden_size)
            calls = 0
            for members, _, h in packed_outputs(body, seqs, last, 16, logits=False,
                                                stacked=stacked):
                out[members] = h
                calls += 1
            hidden[stacked] = (out, calls)
        assert hidden[False][1] > 1 and hidden[True][1] == 1
        assert torch.allclose(hidden[True][0], hidden[False][0], atol=ATOL)
        # and each equals the sequence run alone
        alone = torch.stack([body(input_ids=s[None], use_cache=False).last_hidden_state[0, -1]
                             for s in seqs])
        assert torch.allclose(hidden[True][0], alone, atol=1e-4)
