"""Padding-free forward passes: several sequences packed end to end into one row.

A right- or left-padded batch computes every padded position in every layer. Packed, the
sequences of a batch are laid end to end in rows of at most `max_tokens` tokens, with
position ids that restart at 0 for each sequence and no attention mask; transformers then
builds a block-diagonal causal mask from the position ids (masking_utils'
`find_packed_sequence_indices`), so each token attends only to its own sequence:

    row  = [x¹₀ … x¹ₗ₁ | x²₀ … x²ₗ₂ | …]          positions [0 … l₁ | 0 … l₂ | …]
    mask = block_diag(causal(l₁), causal(l₂), …)

The result equals the padded pass to float error, with no padded position computed at all.
Pass `use_cache=False`: with a KV cache transformers does not build the packed mask, and
the sequences would see each other.
Rows stay short (attention costs grow with the row length squared), and each row is its own
forward call, so rows need no padding either.

`supports_packing(model)` checks this on the model itself once (two short random
sequences, packed and alone); a model whose attention ignores packed position ids gets
the padded path instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

DEFAULT_ROW_TOKENS = 512  # longer rows: fewer, larger matmuls; attention grows with length²


@dataclass
class PackedRow:
    input_ids: torch.Tensor      # [1, N]
    position_ids: torch.Tensor   # [1, N]
    members: list[int]           # which sequences of the batch, in order
    starts: list[int]            # offset of each member in the row
    lengths: list[int]


def fill_rows(sizes: list[int], max_tokens: int) -> list[list[int]]:
    """Items of these sizes, in order, in rows of at most `max_tokens` (an item larger than
    that gets a row of its own): the indices of each row."""
    rows: list[list[int]] = []
    size = 0
    for i, n in enumerate(sizes):
        if not rows or size + n > max_tokens:
            rows.append([])
            size = 0
        rows[-1].append(i)
        size += n
    return rows


def pack_sequences(seqs: list[torch.Tensor], max_tokens: int = DEFAULT_ROW_TOKENS
                   ) -> list[PackedRow]:
    """Lay 1-D token tensors end to end in rows of at most `max_tokens` (a longer sequence
    gets a row of its own), in order."""
    out = []
    for members in fill_rows([int(s.numel()) for s in seqs], max_tokens):
        parts = [seqs[i].reshape(-1) for i in members]
        lengths = [int(p.numel()) for p in parts]
        starts = [sum(lengths[:k]) for k in range(len(lengths))]
        device = parts[0].device
        out.append(PackedRow(
            input_ids=torch.cat(parts).unsqueeze(0),
            position_ids=torch.cat([torch.arange(n, device=device) for n in lengths])
            .unsqueeze(0),
            members=members, starts=starts, lengths=lengths))
    return out


def packed_outputs(model, seqs: list[torch.Tensor], keep: list[torch.Tensor],
                   max_tokens: int = DEFAULT_ROW_TOKENS, *, logits: bool = True,
                   hidden: bool = False, logits_to_keep: bool = False
                   ) -> Iterator[tuple[list[int], torch.Tensor | None, torch.Tensor | None]]:
    """The packed forward pass: `model` over `seqs` laid end to end (`pack_sequences`), its
    outputs read at positions `keep[b]` (within sequence b) of each sequence.

    Yields per row (members, logits [n, V] or None, last hidden states [n, H] or None) at
    the kept positions of the row's members, member by member: concatenated over the rows
    they are in the order of `seqs`. `model` is a causal LM (`hidden`: its last hidden state
    too; `logits_to_keep`: its forward takes that argument, so the LM head runs only on the
    kept positions), or with logits=False a transformer body (its last_hidden_state).
    """
    for row in pack_sequences(seqs, max_tokens):
        device = row.input_ids.device
        idx = torch.cat([start + keep[b].to(device) for b, start in zip(row.members, row.starts)])
        kwargs: dict = dict(input_ids=row.input_ids, position_ids=row.position_ids,
                            use_cache=False)
        if not logits:
            yield row.members, None, model(**kwargs).last_hidden_state[0, idx]
            continue
        if logits_to_keep:
            kwargs["logits_to_keep"] = idx
        if hidden:
            kwargs["output_hidden_states"] = True
        out = model(**kwargs)
        yield (row.members, out.logits[0] if logits_to_keep else out.logits[0, idx],
               out.hidden_states[-1][0, idx] if hidden else None)


def unpad(tokens: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The real tokens of each row of a padded [B, L] batch (left or right padding)."""
    return [t[m.bool()] for t, m in zip(tokens, mask)]


@torch.no_grad()
def supports_packing(model) -> bool:
    """Whether a packed row gives the same outputs as its sequences run alone (cached on
    the model). Checked once with two short random sequences, in eval mode."""
    cached = getattr(model, "_rlhf_lab_packing", None)
    if cached is not None:
        return cached
    ok = False
    try:
        param = next(model.parameters())
        vocab = int(model.get_input_embeddings().weight.shape[0])
        g = torch.Generator().manual_seed(0)
        a = torch.randint(3, vocab, (5,), generator=g).to(param.device)
        b = torch.randint(3, vocab, (7,), generator=g).to(param.device)
        was_training = model.training
        model.eval()
        try:
            packed = torch.cat([logits.float() for _, logits, _ in packed_outputs(
                model, [a, b], [torch.arange(len(a)), torch.arange(len(b))], max_tokens=64)])
            alone = torch.cat([model(input_ids=s[None], use_cache=False).logits[0].float()
                               for s in (a, b)])
        finally:
            if was_training:
                model.train()
        scale = alone.abs().max().clamp(min=1.0)
        tol = 1e-3 if param.dtype == torch.float32 else 3e-2
        ok = bool(((packed - alone).abs().max() / scale) < tol)
    except Exception:  # noqa: BLE001 - any failure means: use the padded path
        ok = False
    try:
        model._rlhf_lab_packing = ok
    except Exception:  # noqa: BLE001
        pass
    return ok
