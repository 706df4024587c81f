"""Memory-lean log-probs (engine.inference.logprobs): the chunked LM head gives the values
and gradients of the plain log-softmax-and-gather; shared-prompt rows give each branch the
outputs of its sequence run alone; a backward row by row gives the whole batch's gradient.
On a real tiny Llama with a LoRA adapter."""
from __future__ import annotations

import torch

from engine.inference.logprobs import (Scored, backward_by_rows, group_sequences,
                                       head_logprobs, logprob_parts, supports_tree,
                                       tree_outputs, tree_rows)
from engine.objectives import entropy_from_logits, logprobs_from_logits
from tests.test_packing import _lora_model


def test_chunked_head_values_and_gradients_equal_the_plain_computation():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, dtype=torch.float64)
    w = torch.randn(101, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 101, (37,), generator=g)
    up = torch.randn(37, generator=g, dtype=torch.float64)
    for T in (1.0, 0.7):
        h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
        plain = logprobs_from_logits(h1 @ w1.t(), y, T)
        (plain * up).sum().backward()
        h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
        got, ent = head_logprobs(h2, w2, y, T, entropy=True, chunk=5)   # 8 chunks
        (got * up).sum().backward()
        assert torch.allclose(got.double(), plain.double(), atol=1e-5)
        assert torch.allclose(ent, entropy_from_logits(h @ w.t(), T).float(), atol=1e-5)
        assert torch.allclose(h2.grad, h1.grad, atol=1e-5)
        assert torch.allclose(w2.grad, w1.grad, atol=1e-5)
    # float32 too, on a frozen head (the LoRA case): only the hidden states get a gradient
    hf = h.float().requires_grad_()
    got, none = head_logprobs(hf, w.float(), y, chunk=7)
    assert none is None
    got.sum().backward()
    hp = h.float().requires_grad_()
    logprobs_from_logits(hp @ w.float().t(), y).sum().backward()
    assert torch.allclose(hf.grad, hp.grad, atol=1e-5)


def test_tree_rows_mask_and_positions():
    rows = tree_rows([(torch.tensor([1, 2]), [torch.tensor([3, 4]), torch.tensor([5])]),
                      (torch.tensor([6]), [torch.tensor([7])])], max_tokens=64)
    assert len(rows) == 1
    row = rows[0]
    assert row.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    assert row.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1]]
    assert row.prefix_starts == [0, 5] and row.branch_starts == [[2, 4], [6]]
    m = row.attention_mask[0, 0].int().tolist()
    assert m[4] == [1, 1, 0, 0, 1, 0, 0]    # branch 2 sees the prompt and itself, not branch 1
    assert m[3] == [1, 1, 1, 1, 0, 0, 0]
    assert m[6] == [0, 0, 0, 0, 0, 1, 1]    # another group sees only its own tokens
    # rows hold whole groups under max_tokens
    assert [r.groups for r in tree_rows([(torch.arange(3), [torch.arange(2)])] * 3, 10)] == \
        [[0, 1], [2]]


def test_shared_prompt_rows_and_chunked_head_equal_separate_sequences(store, tiny_model_dir):
    model = _lora_model(store, tiny_model_dir)
    parts = logprob_parts(model)
    assert parts is not None and supports_tree(model) is True
    body, head = parts
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(3, 1000, (6,), generator=gen)
    seqs = [torch.cat([prompt, torch.randint(3, 1000, (n,), generator=gen)]) for n in (4, 7)]
    seqs.append(torch.randint(3, 1000, (9,), generator=gen))  # its own group
    scored = [Scored(s, torch.arange(6, len(s))) for s in seqs[:2]] + \
        [Scored(seqs[2], torch.arange(2, 9))]
    groups = group_sequences(scored, [0, 0, 1])
    assert groups == [([0, 1], 6), ([2], 2)]
    with torch.no_grad():
        want = [logprobs_from_logits(model(input_ids=s[None]).logits[0, sc.positions - 1],
                                     s[sc.positions]) for s, sc in zip(seqs, scored)]
        got = {}
        for members, hidden in tree_outputs(body, scored, groups, max_tokens=12):
            for i, h in zip(members, hidden):
                got[i] = head_logprobs(h, head.weight, seqs[i][scored[i].positions])[0]
    assert sorted(got) == [0, 1, 2]
    for i in range(3):
        assert torch.allclose(got[i], want[i], atol=1e-4), i


def test_backward_by_rows_gives_the_whole_batch_gradient():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 3, generator=g, requires_grad=True)
    x = torch.randn(5, 4, generator=g)
    target = torch.randn(5, 3, generator=g)

    def loss_fn(values):   # a sum over entries divided by a constant
        return ((values - target) ** 2).sum() / 7

    loss_fn(x @ w).backward()
    whole = w.grad.clone()
    w.grad = None
    rows = (([i for i in members], x[members] @ w) for members in ([0, 3], [1], [2, 4]))
    values = backward_by_rows(rows, torch.zeros(5, 3), loss_fn)
    assert torch.allclose(w.grad, whole, atol=1e-6)
    assert torch.allclose(values, (x @ w).detach())


def _prompts_and_answers(G: int = 3):
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, 1000, (n,), generator=gen) for n in (5, 8)]
    P = max(len(p) for p in prompts)
    query = torch.zeros(len(prompts), P, dtype=torch.long)
    qmask = torch.zeros_like(query)
    for i, p in enumerate(prompts):       # left padding, as the RL stages sample
        query[i, P - len(p):], qmask[i, P - len(p):] = p, 1
    query, qmask = query.repeat_interleave(G, 0), qmask.repeat_interleave(G, 0)
    lengths = [4, 1, 6, 3, 6, 2]
    response = torch.randint(3, 1000, (len(lengths), 6), generator=gen)
    mask = (torch.arange(6)[None] < torch.tensor(lengths)[:, None]).long()
    return query, qmask, response * mask, mask


def _plain_answer_logprobs(model, query, qmask, response, mask, T):
    """The RL stages' padded pass (ppo.PPOTrainer.forward without packing)."""
    ids, attn = torch.cat([query, response], 1), torch.cat([qmask, mask], 1)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(1) - 1)
                   .clamp(min=0), use_cache=False).logits[:, -(response.shape[1] + 1):-1]
    return (logprobs_from_logits(logits, response, T) * mask,
            entropy_from_logits(logits.detach(), T) * mask)


def test_rl_answer_rows_equal_the_padded_pass_with_the_same_gradient(store, tiny_model_dir):
    from engine.inference.logprobs import answer_rows, gather_rows
    from engine.objectives import grpo_loss

    model = _lora_model(store, tiny_model_dir)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    query, qmask, response, mask = _prompts_and_answers()
    T = 0.7
    plain, plain_ent = _plain_answer_logprobs(model, query, qmask, response, mask, T)
    old = plain.detach() + 0.05 * torch.randn_like(plain) * mask
    ref = plain.detach() - 0.1 * mask
    adv = torch.tensor([1.0, -0.5, -0.5, 0.3, 0.2, -0.5])

    def loss_fn(lp):
        return grpo_loss(lp, old, ref, adv, mask.float(), 0.2, 0.04)[0]

    want = torch.autograd.grad(loss_fn(plain), params)
    with torch.no_grad():
        logp, _, ent = gather_rows(answer_rows(model, query, qmask, response, mask, T, 512,
                                               entropy=True), mask)
    assert torch.allclose(logp, plain.detach(), atol=1e-4)
    assert torch.allclose(ent, plain_ent, atol=1e-4)
    # two prompts × 3 answers, rows of ≤ 20 tokens: one group per row, backpropagated in turn
    rows = answer_rows(model, query, qmask, response, mask, T, 20)
    values = backward_by_rows(((m, lp) for m, lp, _, _ in rows), old, loss_fn)
    assert torch.allclose(values, plain.detach(), atol=1e-4)
    for p, g in zip(params, want):
        assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-3)


def test_sample_groups_draws_what_generate_draws_with_the_log_probs_of_a_forward_pass(
        store, tiny_model_dir):
    from transformers import GenerationConfig

    from engine.inference.generate import sample_groups

    model = _lora_model(store, tiny_model_dir)
    query, qmask, _, _ = _prompts_and_answers(G=1)
    G, eos, pad = 3, 7, 0
    for T, top_p in ((1.0, 1.0), (0.8, 0.9)):
        torch.manual_seed(11)
        gen = GenerationConfig(do_sample=True, temperature=T, top_p=top_p, top_k=0,
                               max_new_tokens=6, pad_token_id=pad, eos_token_id=eos,
                               return_dict_in_generate=True)
        with torch.no_grad():
            hf = model.generate(input_ids=query.repeat_interleave(G, 0),
                                attention_mask=qmask.repeat_interleave(G, 0),
                                generation_config=gen).sequences[:, query.shape[1]:]
        torch.manual_seed(11)
        tokens, logp = sample_groups(model, query, qmask, G, max_new_tokens=6, temperature=T,
                                     top_p=top_p, eos_token_id=eos, pad_token_id=pad)
        assert torch.equal(tokens, hf)
        mask = torch.ones_like(tokens)
        with torch.no_grad():
            want, _ = _plain_answer_logprobs(model, query.repeat_interleave(G, 0),
                                             qmask.repeat_interleave(G, 0), tokens, mask, T)
        assert torch.allclose(logp, want, atol=1e-4)
