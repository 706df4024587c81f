"""Log-probabilities of chosen tokens with little memory: chunked LM head, shared prompts.

Three pieces the RL and DPO stages use for their forward passes:

1. **Chunked log-softmax-and-gather** (`head_logprobs`). The plain way computes the logits
   z = h·Wᵀ of every scored position over the whole vocabulary V ([N, V] in float32, 196 KB a
   token for V = 49152), then their log-softmax (another [N, V]) and, under autograd, keeps
   both for the backward pass and builds their gradient ([N, V] again). Here the LM head runs
   on `chunk` positions at a time inside one autograd function: forward keeps only
   log-sum-exp per position, backward recomputes each chunk's logits and turns them into
   ∂L/∂h = Σ_a g·(1[a = y] − softmax(z)_a)/T · W_a. [N, V] never exists whole; the values
   are those of `objectives.logprobs_from_logits` (the same log softmax(z/T)[y]), and so
   are the gradients. The entropy of each position comes out of the same pass (no grad).

2. **Shared-prompt rows** (`tree_rows`). GRPO's G answers to one prompt, and DPO's chosen
   and rejected answers, share their prompt. A row holds the prompt once and then each
   answer; a 4-D attention mask lets answer k see the prompt and its own earlier tokens
   only, and its position ids continue from the prompt, so every token's hidden state is
   the one of its own sequence run alone (to float error), while the prompt is computed
   once instead of G (or 2) times. Several groups share a row (the mask is block-diagonal
   over groups); rows hold whole groups and stay under `max_tokens`. On a GPU the rows of a
   pass are stacked into one forward call (engine.inference.packing.stack_rows: each row's
   mask padded, a padded position attending to itself only); on the CPU each row is its own
   call (`packing.use_stacked`).

3. **Backward row by row** (`backward_by_rows`). A loss that is a sum over tokens (or over
   pairs) divided by a constant has, for the tokens of one row, the same gradient whatever
   the other rows' values are. So each row's forward is followed at once by the backward of
   the loss with the other rows' log-probs held as constants, and only one row's
   activations live at a time; the gradients add up to those of the whole batch.

`logprob_parts(model)` says whether a model's logits are exactly lm_head(body(x)) (checked
once on the model, cached), the condition for 1; `supports_tree(model)` checks 2 the same
way. Either failing, the callers keep their plain paths.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from engine.inference.packing import fill_rows, stack_groups, stack_rows, use_stacked
from engine.objectives import entropy_from_logits, logprobs_from_logits

GRAD_ROW_TOKENS = 256     # rows backpropagated one at a time: their activations are the peak
CHUNK_ELEMENTS = 1 << 22   # logits per chunk (4 M floats, 16 MB): V = 49152 → 85 positions


def chunk_rows(vocab: int, elements: int = CHUNK_ELEMENTS) -> int:
    return max(1, elements // max(1, vocab))


class _HeadLogprobs(torch.autograd.Function):
    """(log softmax(h·Wᵀ/T)[y], entropy) per row of h, a chunk of rows at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk, want_entropy):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(n, dtype=torch.float32, device=hidden.device) if want_entropy \
            else None
        for s in range(0, n, chunk):
            z = hidden[s:s + chunk] @ weight.t()
            # the engine's own log-softmax-and-gather, a chunk of rows at a time: the same
            # numbers as on the whole [N, V] (a row-wise operation)
            logp[s:s + chunk] = logprobs_from_logits(z, targets[s:s + chunk], temperature)
            z = z.float() / temperature
            lse[s:s + chunk] = torch.logsumexp(z, dim=-1)
            if want_entropy:
                ent[s:s + chunk] = entropy_from_logits(z)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        if ent is None:
            ent = torch.zeros(0, device=hidden.device)
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, _grad_ent):
        hidden, weight, targets, lse = ctx.saved_tensors
        T, chunk = ctx.temperature, ctx.chunk
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] \
            else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk]
            z = (h @ weight.t()).float() / T
            g = grad_logp[s:s + chunk].float()
            # ∂(z_y − lse)/∂z = onehot(y) − softmax(z); then ∂z/∂(h·Wᵀ) = 1/T
            gz = torch.exp(z - lse[s:s + chunk, None]).mul_(-g[:, None])
            gz.scatter_add_(1, targets[s:s + chunk, None], g[:, None])
            gz = gz.div_(T).to(hidden.dtype)
            if grad_h is not None:
                grad_h[s:s + chunk] = gz @ weight
            if grad_w is not None:
                grad_w += (gz.t() @ h).float()
        return (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                None, None, None, None)


@functools.lru_cache(maxsize=1)
def _liger_loss():
    """liger-kernel's fused linear cross-entropy per token (its Triton kernels: the logits
    of a chunk never leave the chip), or None where it is not installed or
    `RLHF_LAB_LIGER=0` (an optional CUDA dependency, kept only where measured faster:
    bench/RESULTS.md)."""
    if os.environ.get("RLHF_LAB_LIGER", "").strip() == "0":
        return None
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import \
            LigerFusedLinearCrossEntropyLoss
    except Exception:  # noqa: BLE001 - not installed, or no Triton/GPU: the engine's own
        return None
    return LigerFusedLinearCrossEntropyLoss(reduction="none")


def head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                  temperature: float = 1.0, entropy: bool = False, chunk: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_i | h_i) = log softmax(h_i·Wᵀ / T)[y_i] for hidden states h [N, H] and an LM
    head W [V, H] (no bias), chunk by chunk (module docstring), float32 [N]; and the entropy
    H(π(·|h_i)) [N] (no gradient) when `entropy`. On CUDA without `entropy`, liger-kernel's
    fused linear cross-entropy where it is installed (z/T = (h/T)·Wᵀ: the same values)."""
    targets = targets.reshape(-1).long()
    if hidden.shape[0] == 0:
        empty = torch.zeros(0, device=hidden.device)
        return empty + hidden.sum() * 0, (empty if entropy else None)
    fused = _liger_loss() if hidden.is_cuda and not entropy else None
    if fused is not None:
        scaled = hidden / temperature if temperature != 1.0 else hidden
        return -fused(weight, scaled, targets).float(), None
    chunk = chunk or chunk_rows(weight.shape[0])
    logp, ent = _HeadLogprobs.apply(hidden, weight, targets, float(temperature), int(chunk),
                                    bool(entropy))
    return logp, (ent if entropy else None)


# -- which models ---------------------------------------------------------------------------
def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _body_and_head(model):
    lm = _unwrap(model)
    try:
        body, head = lm.get_decoder(), lm.get_output_embeddings()
    except Exception:  # noqa: BLE001 - no such accessors: not a plain causal LM
        return None
    if body is None or type(head) is not nn.Linear or head.bias is not None:
        return None
    cfg = getattr(lm, "config", None)
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    return body, head


def _check_once(model, attr: str, check: Callable[[], bool]) -> bool:
    cached = getattr(model, attr, None)
    if cached is not None:
        return cached
    ok = False
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ok = bool(check())
    except Exception:  # noqa: BLE001 - any failure means: keep the plain path
        ok = False
    finally:
        if was_training:
            model.train()
    try:
        setattr(model, attr, ok)
    except Exception:  # noqa: BLE001
        pass
    return ok


def _close(a: torch.Tensor, b: torch.Tensor, dtype) -> bool:
    scale = b.abs().max().clamp(min=1.0)
    return bool(((a.float() - b.float()).abs().max() / scale)
                < (1e-3 if dtype == torch.float32 else 3e-2))


def _probe(model, n: int, seed: int = 0) -> torch.Tensor:
    param = next(model.parameters())
    vocab = int(model.get_input_embeddings().weight.shape[0])
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).to(param.device)


def logprob_parts(model):
    """(body, head) when `model`'s logits are exactly head(body(x).last_hidden_state) (a
    causal LM or a peft model around one: the body keeps its adapters), else None."""
    parts = _body_and_head(model)
    if parts is None:
        return None

    def check():
        ids = _probe(model, 6)[None]
        body, head = parts
        want = model(input_ids=ids, use_cache=False).logits[0]
        got = head(body(input_ids=ids, use_cache=False).last_hidden_state[0])
        return _close(got, want, next(model.parameters()).dtype)

    return parts if _check_once(model, "_rlhf_lab_head_split", check) else None


# -- shared-prompt rows ---------------------------------------------------------------------
@dataclass
class TreeRow:
    input_ids: torch.Tensor      # [1, L]
    position_ids: torch.Tensor   # [1, L]
    attention_mask: torch.Tensor  # [1, 1, L, L] bool: True = may attend
    groups: list[int]            # which groups, in order
    prefix_starts: list[int]     # where each group's prefix starts in the row
    branch_starts: list[list[int]]  # where each of its branches starts


def tree_rows(groups: list[tuple[torch.Tensor, list[torch.Tensor]]],
              max_tokens: int) -> list[TreeRow]:
    """Rows of whole groups (prefix, [branches]): each group laid out as prefix, branch 1,
    branch 2, …; a group longer than max_tokens gets a row of its own."""
    out = []
    for members in fill_rows([len(p) + sum(len(b) for b in bs) for p, bs in groups],
                             max_tokens):
        ids, pos, seg, branch, pstarts, bstarts = [], [], [], [], [], []
        offset = 0
        for k, g in enumerate(members):
            prefix, branches = groups[g]
            p = len(prefix)
            pstarts.append(offset)
            ids.append(prefix.reshape(-1))
            pos.append(torch.arange(p))
            seg.append(torch.full((p,), k))
            branch.append(torch.zeros(p, dtype=torch.long))
            offset += p
            starts = []
            for j, b in enumerate(branches):
                starts.append(offset)
                ids.append(b.reshape(-1))
                pos.append(torch.arange(p, p + len(b)))
                seg.append(torch.full((len(b),), k))
                branch.append(torch.full((len(b),), j + 1))
                offset += len(b)
            bstarts.append(starts)
        device = ids[0].device
        seg_t, br_t = torch.cat(seg), torch.cat(branch)
        L = len(seg_t)
        idx = torch.arange(L)
        mask = (seg_t[:, None] == seg_t[None, :]) & (idx[None, :] <= idx[:, None]) & \
            ((br_t[None, :] == 0) | (br_t[None, :] == br_t[:, None]))
        out.append(TreeRow(torch.cat(ids)[None], torch.cat(pos)[None].to(device),
                           mask[None, None].to(device), members, pstarts, bstarts))
    return out


def shared_prefix(seqs: list[torch.Tensor], limit: int) -> int:
    """Length of the common prefix of `seqs`, at most `limit`."""
    n = min([limit] + [len(s) for s in seqs])
    if len(seqs) < 2 or n <= 0:
        return max(n, 0)
    first = seqs[0][:n]
    same = torch.ones(n, dtype=torch.bool, device=first.device)
    for s in seqs[1:]:
        same &= s[:n] == first
    bad = (~same).nonzero()
    return int(bad[0]) if len(bad) else n


def supports_tree(model) -> bool:
    """Whether a shared-prompt row (4-D mask, continued position ids) gives each branch the
    outputs of its own sequence run alone (checked once on the model, cached)."""
    def check():
        prefix, a, b = _probe(model, 4, 1), _probe(model, 3, 2), _probe(model, 5, 3)
        row = tree_rows([(prefix, [a, b])], 64)[0]
        got = model(input_ids=row.input_ids, position_ids=row.position_ids,
                    attention_mask=row.attention_mask, use_cache=False).logits[0]
        want = torch.cat([model(input_ids=torch.cat([prefix, s])[None], use_cache=False)
                          .logits[0, -len(s):] for s in (a, b)])
        return _close(got[len(prefix):], want, next(model.parameters()).dtype)

    return _check_once(model, "_rlhf_lab_tree", check)


@dataclass
class Scored:
    """One sequence to score: its tokens and the positions t whose token y_t is scored
    (predicted from position t − 1, so every t ≥ 1); the targets are tokens[positions]
    unless given."""
    tokens: torch.Tensor     # [n]
    positions: torch.Tensor  # [k]
    targets: torch.Tensor | None = None

    def target_tokens(self) -> torch.Tensor:
        return self.tokens[self.positions] if self.targets is None else self.targets


def group_sequences(seqs: list[Scored], group_of: list[int] | None = None
                    ) -> list[tuple[list[int], int]]:
    """The groups of a batch: sequences with the same `group_of` key (default: each its own
    group) in order of first appearance, and the prefix they share (cut before the first
    scored position of any member, so no scored token sits in the shared part)."""
    keys = list(range(len(seqs))) if group_of is None else group_of
    order: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        order.setdefault(k, []).append(i)
    out = []
    for members in order.values():
        first = min([int(seqs[i].positions.min()) if len(seqs[i].positions) else
                     len(seqs[i].tokens) for i in members])
        # the branch must keep at least one token so its first scored position has a
        # predecessor: a prefix of length p ≤ first scored position works (position p−1
        # predicts position p from inside the prefix)
        p = shared_prefix([seqs[i].tokens for i in members], first) if len(members) > 1 \
            else min(first, len(seqs[members[0]].tokens))
        out.append((members, p))
    return out


def tree_outputs(body, seqs: list[Scored], groups: list[tuple[list[int], int]],
                 max_tokens: int, stacked: bool | None = None
                 ) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    """Per forward call: (its sequences, in order, and for each the last hidden states
    [k, H] at the positions that predict its scored tokens). `body` is the model's
    transformer body. One call a row, or (`stacked`, default `use_stacked` of the tokens'
    device) the rows stacked into as few calls as `packing.stack_groups` allows."""
    layout = [(seqs[m[0]].tokens[:p], [seqs[i].tokens[p:] for i in m]) for m, p in groups]
    rows = tree_rows(layout, max_tokens)
    if stacked is None:
        stacked = bool(seqs) and use_stacked(seqs[0].tokens.device)
    for chunk in stack_groups([r.input_ids.shape[1] for r in rows], stacked):
        if len(chunk) == 1:
            row = rows[chunk[0]]
            h = body(input_ids=row.input_ids, position_ids=row.position_ids,
                     attention_mask=row.attention_mask, use_cache=False).last_hidden_state
        else:
            ids, pos, mask = stack_rows([rows[c].input_ids[0] for c in chunk],
                                        [rows[c].position_ids[0] for c in chunk],
                                        [rows[c].attention_mask[0, 0] for c in chunk])
            h = body(input_ids=ids, position_ids=pos, attention_mask=mask,
                     use_cache=False).last_hidden_state
        members, hidden = [], []
        for r, c in enumerate(chunk):
            row = rows[c]
            for g, pstart, bstarts in zip(row.groups, row.prefix_starts, row.branch_starts):
                idx_members, p = groups[g]
                for i, bstart in zip(idx_members, bstarts):
                    prev = seqs[i].positions.to(h.device) - 1     # the predicting positions
                    where = torch.where(prev < p, pstart + prev, bstart + prev - p)
                    members.append(i)
                    hidden.append(h[r, where])
        yield members, hidden


def backward_by_rows(rows: Iterator[tuple[list[int], torch.Tensor]], filler: torch.Tensor,
                     loss_fn: Callable[[torch.Tensor], torch.Tensor],
                     backward: Callable[[torch.Tensor], None] = torch.Tensor.backward
                     ) -> torch.Tensor:
    """Backpropagate a loss that is a sum over entries of `filler`'s first dimension divided
    by a constant (module docstring, 3), one row at a time: `rows` yields (indices, values
    with grad [n, ...]) for some entries; each row's values go into a detached copy of the
    current values (`filler` where no row gave them yet) and `loss_fn` of that is
    backpropagated at once. Returns the detached values of every entry."""
    current = filler.detach().clone()
    for members, values in rows:
        index = torch.tensor(members, device=current.device)
        full = current.index_put((index,), values)
        backward(loss_fn(full))
        current[index] = values.detach()
    return current


def sequence_rows(model, seqs: list[Scored], group_of: list[int] | None, max_tokens: int,
                  stacked: bool | None = None):
    """Σ_t log π(y_t | y_<t) over each sequence's scored tokens, lean: sequences with the
    same `group_of` key share their common prefix in one row (`tree_rows`), the LM head runs
    chunked on the scored positions only. Yields per row (sequence indices, sums [n]); None
    when the model has no such path (`logprob_parts`, `supports_tree`)."""
    parts = logprob_parts(model)
    if parts is None or not supports_tree(model):
        return None
    body, head = parts
    return _sequence_rows(body, head.weight, seqs, group_of, max_tokens, stacked)


def _sequence_rows(body, weight, seqs, group_of, max_tokens, stacked):
    groups = group_sequences(seqs, group_of)
    for members, states in tree_outputs(body, seqs, groups, max_tokens, stacked):
        h = torch.cat(states)
        logp, _ = head_logprobs(h, weight, torch.cat([seqs[i].target_tokens().to(h.device)
                                                      for i in members]))
        lengths = torch.tensor([len(seqs[i].positions) for i in members], device=h.device)
        which = torch.repeat_interleave(torch.arange(len(members), device=h.device), lengths)
        yield members, logp.new_zeros(len(members)).index_add(0, which, logp)


def answer_rows(model, query: torch.Tensor, query_mask: torch.Tensor, response: torch.Tensor,
                mask: torch.Tensor, temperature: float, max_tokens: int, *,
                entropy: bool = False, hidden: bool = False, stacked: bool | None = None):
    """The RL stages' pass over prompt + answer, lean: answers to the same prompt share a
    row with that prompt once (`tree_rows`), and the LM head runs chunked on the answer
    positions only (`head_logprobs`). Yields per row (answer indices, log-probs [n, T] at
    `temperature`, entropies [n, T] or None, last hidden states [n, T, H] or None), 0 on the
    padding of `mask`; None when the model has no such path (`logprob_parts`,
    `supports_tree`): the caller keeps its own."""
    parts = logprob_parts(model)
    if parts is None or not supports_tree(model):
        return None
    body, head = parts
    return _answer_rows(body, head.weight, query, query_mask, response, mask, temperature,
                        max_tokens, entropy, hidden, stacked)


def _answer_rows(body, weight, query, query_mask, response, mask, temperature, max_tokens,
                 entropy, hidden, stacked):
    T = response.shape[1]
    prompts = [q[m.bool()] for q, m in zip(query, query_mask)]
    answers = [r[m.bool()] for r, m in zip(response, mask)]
    keys: dict[tuple, int] = {}
    group_of = [keys.setdefault(tuple(p.tolist()), len(keys)) for p in prompts]
    scored = [Scored(torch.cat([p, a]), torch.arange(len(p), len(p) + len(a),
                                                     device=p.device))
              for p, a in zip(prompts, answers)]
    groups = group_sequences(scored, group_of)
    for members, states in tree_outputs(body, scored, groups, max_tokens, stacked):
        lengths = torch.tensor([len(answers[i]) for i in members], device=response.device)
        rows = torch.repeat_interleave(torch.arange(len(members), device=response.device),
                                       lengths)
        cols = torch.cat([torch.arange(int(n), device=response.device) for n in lengths])
        h = torch.cat(states)
        logp, ent = head_logprobs(h, weight, torch.cat([answers[i] for i in members]),
                                  temperature, entropy)

        def grid(x, *shape):
            return x.new_zeros(len(members), T, *shape).index_put((rows, cols), x)

        yield (members, grid(logp), grid(ent) if entropy else None,
               grid(h, h.shape[-1]) if hidden else None)


def gather_rows(rows, mask: torch.Tensor, value_head=None):
    """`answer_rows`' rows in batch order: (log-probs [B, T], value_head of the hidden states
    [B, T] or None, entropies [B, T] or None), 0 where `mask` is 0."""
    B, T = mask.shape
    logp = torch.zeros(B, T, device=mask.device)
    ent = values = None
    for members, lp, e, h in rows:
        index = torch.tensor(members, device=mask.device)
        logp = logp.index_put((index,), lp)
        if e is not None:
            ent = (torch.zeros(B, T, device=mask.device) if ent is None else ent) \
                .index_put((index,), e)
        if value_head is not None:
            v = value_head(h)
            values = (v.new_zeros(B, T) if values is None else values).index_put((index,), v)
    if values is not None:
        values = values * mask
    return logp, values, ent


__all__ = ["head_logprobs", "logprob_parts", "tree_rows", "supports_tree", "Scored",
           "group_sequences", "tree_outputs", "backward_by_rows", "answer_rows", "sequence_rows",
           "gather_rows", "logprobs_from_logits"]
