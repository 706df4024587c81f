"""Padding-free passes (engine.inference.packing): sequences packed end to end give the padded
batch's outputs, on a real tiny Llama with a LoRA adapter."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from engine.inference.packing import pack_sequences, supports_packing, unpad
from tests.conftest import make_adapter_run


def test_pack_sequences_fills_rows_in_order_and_restarts_positions():
    seqs = [torch.arange(n) + 10 * i for i, n in enumerate([3, 4, 2, 9, 1])]
    rows = pack_sequences(seqs, max_tokens=8)
    assert [r.members for r in rows] == [[0, 1], [2], [3], [4]]  # 9 > 8: a row of its own
    assert rows[0].input_ids.tolist() == [[0, 1, 2, 10, 11, 12, 13]]
    assert rows[0].position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3]]
    assert rows[0].starts == [0, 3] and rows[0].lengths == [3, 4]
    assert sum(r.input_ids.numel() for r in rows) == 19  # no padding anywhere
    left = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 1]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert [t.tolist() for t in unpad(left, mask)] == [[5, 6], [7, 8, 9, 1]]


def _lora_model(store, tiny_model_dir):
    from engine.inference.models import adapter_dir, load_adapter, load_base

    run = make_adapter_run(store, tiny_model_dir)
    model = load_adapter(load_base(str(tiny_model_dir), "cpu").model, adapter_dir(run))
    return model.eval()


def test_packed_logits_equal_the_padded_batch(store, tiny_model_dir):
    model = _lora_model(store, tiny_model_dir)
    assert supports_packing(model) is True
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, 1000, (n,), generator=g) for n in (5, 11, 7)]
    L = max(len(s) for s in seqs)
    ids = torch.zeros(3, L, dtype=torch.long)
    mask = torch.zeros(3, L, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        row = pack_sequences(seqs, max_tokens=64)[0]
        packed = model(input_ids=row.input_ids, position_ids=row.position_ids,
                       use_cache=False).logits[0]
    for i, (start, n) in enumerate(zip(row.starts, row.lengths)):
        assert torch.allclose(packed[start:start + n], padded[i, :n], atol=1e-4)
    # the sequences really are kept apart: without the restarting positions, or with a
    # KV cache (transformers then skips the packed mask), they are not
    with torch.no_grad():
        leaked = model(input_ids=row.input_ids, use_cache=False).logits[0]
        cached = model(input_ids=row.input_ids, position_ids=row.position_ids).logits[0]
    s1 = row.starts[1]
    assert not torch.allclose(leaked[s1:s1 + 11], padded[1, :11], atol=1e-3)
    assert not torch.allclose(cached[s1:s1 + 11], padded[1, :11], atol=1e-3)


class IgnoresPositions(nn.Module):
    """A model whose forward drops position_ids: packing must be detected as unsafe."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, position_ids=None, **kw):
        return self.inner(input_ids=input_ids, **kw)


def test_a_model_that_ignores_packed_positions_gets_the_padded_path(store, tiny_model_dir):
    model = _lora_model(store, tiny_model_dir)
    assert supports_packing(IgnoresPositions(model)) is False


def test_reward_scores_are_the_same_packed_or_padded(store, tiny_model_dir, embedded_dir):
    from engine.inference.models import load_tokenizer
    from engine.training.reward import new_head, score_with_model

    model = _lora_model(store, tiny_model_dir)
    tok = load_tokenizer(str(tiny_model_dir))
    head = new_head(64, seed=2)
    prompts = ["Say hi", "What is RLHF, in one long sentence please?", "2+2?"]
    answers = ["Hi!", "Reinforcement learning from human feedback.", "4, of course, it is 4."]
    packed = score_with_model(model, head, tok, prompts, answers)
    assert model._rlhf_lab_packing is True
    model._rlhf_lab_packing = False  # force the padded path
    padded = score_with_model(model, head, tok, prompts, answers, batch_size=3)
    assert len(set(packed)) == 3
    assert torch.allclose(torch.tensor(packed), torch.tensor(padded), atol=1e-4)


class EchoLM(nn.Module):
    """Reads its input back: logits = token id, hidden = 10 × token id, position by position
    (and records each call), so the kept outputs say which positions were read."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, input_ids, position_ids, use_cache, logits_to_keep=None,
                output_hidden_states=False):
        self.calls.append((input_ids.shape[1], logits_to_keep))
        x = input_ids.float()[..., None]
        logits = x if logits_to_keep is None else x[:, logits_to_keep]
        return SimpleNamespace(logits=logits, hidden_states=(10 * x,) if output_hidden_states
                               else None, last_hidden_state=10 * x)


def test_packed_outputs_read_the_kept_positions_of_each_sequence_in_order():
    from engine.inference.packing import packed_outputs

    seqs = [torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6, 7]), torch.tensor([8, 9])]
    keep = [torch.tensor([0, 2]), torch.tensor([1, 2, 3]), torch.tensor([1])]
    want = [1.0, 3.0, 5.0, 6.0, 7.0, 9.0]
    for to_keep in (False, True):
        lm = EchoLM()
        rows = list(packed_outputs(lm, seqs, keep, max_tokens=7, hidden=True,
                                   logits_to_keep=to_keep))
        assert [m for m, _, _ in rows] == [[0, 1], [2]]      # 3 + 4 tokens, then 2
        assert torch.cat([lg for _, lg, _ in rows]).flatten().tolist() == want
        assert torch.cat([h for _, _, h in rows]).flatten().tolist() == [10 * w for w in want]
        # with logits_to_keep the head sees only the kept row positions (offsets included)
        assert [c[1].tolist() if to_keep else c[1] for c in lm.calls] == \
            ([[0, 2, 4, 5, 6], [1]] if to_keep else [None, None])
    body = list(packed_outputs(EchoLM(), seqs, keep, max_tokens=7, logits=False))
    assert [lg for _, lg, _ in body] == [None, None]
    assert torch.cat([h for _, _, h in body]).flatten().tolist() == [10 * w for w in want]
