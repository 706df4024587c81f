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
Rows stay short (attention costs grow with the row length squared). On the CPU each row is
its own forward call (no padding at all); on a GPU, where one call a row leaves the device
idle, the rows are stacked into one batch (`stack_rows`: each row right-padded to the longest,
its block-diagonal causal mask given explicitly as a 4-D boolean mask, so SDPA runs the whole
pass in one call; `use_stacked(device)` decides, `RLHF_LAB_STACK_ROWS=0/1` overrides it for
measurements). Padded positions attend to themselves only and are never read.

`supports_packing(model)` checks this on the model itself once (two short random
sequences, packed and alone); a model whose attention ignores packed position ids gets
the padded path instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch

DEFAULT_ROW_TOKENS = 512  # longer rows: fewer, larger matmuls; attention grows with length²
STACK_TOKENS = 32768      # padded tokens of one stacked forward (GPU): rows × longest row


def use_stacked(device) -> bool:
    """Whether the rows of a padding-free pass go through the model stacked in one call
    (GPU) or one call a row (CPU: the path its goals were measured on; stacking pads rows
    and was not shown faster there, bench/RESULTS.md).
    `RLHF_LAB_STACK_ROWS=1` / `0` forces either (for measurements)."""
    forced = os.environ.get("RLHF_LAB_STACK_ROWS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return torch.device(device).type == "cuda"


def stack_groups(sizes: list[int], stacked: bool, budget: int = STACK_TOKENS
                 ) -> list[list[int]]:
    """Consecutive rows (of these lengths) grouped into forward calls: one each when not
    `stacked`, else as many as keep rows × longest row within `budget`."""
    if not stacked:
        return [[i] for i in range(len(sizes))]
    out: list[list[int]] = []
    longest = 0
    for i, n in enumerate(sizes):
        if out and max(longest, n) * (len(out[-1]) + 1) <= budget:
            out[-1].append(i)
            longest = max(longest, n)
        else:
            out.append([i])
            longest = n
    return out


def causal_blocks(lengths: list[int], device=None) -> torch.Tensor:
    """The [N, N] boolean mask of sequences of these lengths laid end to end: each position
    sees the earlier positions of its own sequence (block-diagonal causal)."""
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    idx = torch.arange(len(seg))
    mask = (seg[:, None] == seg[None, :]) & (idx[None, :] <= idx[:, None])
    return mask.to(device) if device is not None else mask


def stack_rows(ids: list[torch.Tensor], positions: list[torch.Tensor],
               masks: list[torch.Tensor], pad_id: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of different lengths (1-D ids and position ids, [L, L] boolean masks) as one
    batch: (ids [R, L], position ids [R, L], mask [R, 1, L, L]), each row right-padded to the
    longest; a padded position attends to itself alone (no row of the mask is empty, which
    SDPA would turn into NaN) and no real position attends to it."""
    L = max(int(x.numel()) for x in ids)
    R = len(ids)
    device = ids[0].device
    out_ids = torch.full((R, L), pad_id, dtype=ids[0].dtype, device=device)
    out_pos = torch.zeros((R, L), dtype=positions[0].dtype, device=device)
    out_mask = torch.eye(L, dtype=torch.bool, device=device).repeat(R, 1, 1)
    for r, (x, p, m) in enumerate(zip(ids, positions, masks)):
        n = int(x.numel())
        out_ids[r, :n] = x.reshape(-1)
        out_pos[r, :n] = p.reshape(-1)
        out_mask[r, :n, :n] = m.reshape(n, n)
    return out_ids, out_pos, out_mask[:, None]


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
                   hidden: bool = False, logits_to_keep: bool = False,
                   stacked: bool | None = None
                   ) -> Iterator[tuple[list[int], torch.Tensor | None, torch.Tensor | None]]:
    """The packed forward pass: `model` over `seqs` laid end to end (`pack_sequences`), its
    outputs read at positions `keep[b]` (within sequence b) of each sequence.

    Yields per row (members, logits [n, V] or None, last hidden states [n, H] or None) at
    the kept positions of the row's members, member by member: concatenated over the rows
    they are in the order of `seqs`. `model` is a causal LM (`hidden`: its last hidden state
    too; `logits_to_keep`: its forward takes that argument, so the LM head runs only on the
    kept positions), or with logits=False a transformer body (its last_hidden_state).
    `stacked` (default `use_stacked` of the tokens' device): the rows go through the model
    in few calls (`stack_rows`; then one yield per call, its rows' members in order).
    """
    rows = pack_sequences(seqs, max_tokens)
    if stacked is None:
        stacked = bool(seqs) and use_stacked(seqs[0].device)
    if stacked:
        yield from _stacked_outputs(model, rows, keep, logits, hidden, logits_to_keep)
        return
    for row in rows:
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


def _stacked_outputs(model, rows: list[PackedRow], keep, logits, hidden, logits_to_keep):
    for group in stack_groups([int(r.input_ids.numel()) for r in rows], True):
        chunk = [rows[g] for g in group]
        device = chunk[0].input_ids.device
        ids, pos, mask = stack_rows([r.input_ids[0] for r in chunk],
                                    [r.position_ids[0] for r in chunk],
                                    [causal_blocks(r.lengths, device) for r in chunk])
        L = ids.shape[1]
        # the kept positions, flattened over the stacked batch ([R·L] indices)
        idx = torch.cat([r_i * L + start + keep[b].to(device)
                         for r_i, r in enumerate(chunk) for b, start in zip(r.members, r.starts)])
        members = [b for r in chunk for b in r.members]
        kwargs: dict = dict(input_ids=ids, position_ids=pos, attention_mask=mask,
                            use_cache=False)
        if not logits:
            h = model(**kwargs).last_hidden_state
            yield members, None, h.reshape(-1, h.shape[-1])[idx]
            continue
        if hidden:
            kwargs["output_hidden_states"] = True
        out = model(**kwargs)
        z = out.logits.reshape(-1, out.logits.shape[-1])[idx]
        h = out.hidden_states[-1] if hidden else None
        yield members, z, (h.reshape(-1, h.shape[-1])[idx] if hidden else None)


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
