"""Sampling: for the compare page, the "try it" jobs and in-app preference collection."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.inference.chat import collate_prompts, encode_prompt
from engine.schema import SamplingSettings, like


@dataclass
class SamplingConfig(SamplingSettings):
    """How `generate` samples: the schema's sampling settings and batching."""
    max_new_tokens: int = like("max_new_tokens", 64)
    top_p: float = like("top_p", 0.9)
    greedy: bool = False
    seed: int | None = 0
    batch_size: int = 8
    max_prompt_length: int = 384


@torch.no_grad()
def generate(model, tokenizer, prompts: list, cfg: SamplingConfig | None = None,
             num_return_sequences: int = 1) -> list[str]:
    """Answers to `prompts` (strings or message lists), batched with left padding.

    With num_return_sequences=k the answers of each prompt are consecutive
    (k answers for prompt 0, then prompt 1, ...).
    """
    return generate_with_lengths(model, tokenizer, prompts, cfg, num_return_sequences)[0]


def answer_length(new_tokens: list[int], eos_token_id: int | None) -> int:
    """The tokens the model generated for one answer, its end-of-sequence token excluded.

    Counted on the generated ids, not by re-tokenising the decoded text: decoding and
    encoding again does not give the same tokens back (a 48-token answer can re-encode to
    50), so a length counted that way can exceed max_new_tokens. After EOS, generate pads.
    """
    if eos_token_id is not None and eos_token_id in new_tokens:
        return new_tokens.index(eos_token_id)
    return len(new_tokens)


@torch.no_grad()
def generate_with_lengths(model, tokenizer, prompts: list, cfg: SamplingConfig | None = None,
                          num_return_sequences: int = 1) -> tuple[list[str], list[int]]:
    """`generate`'s answers and, for each, its length in generated tokens (answer_length)."""
    cfg = cfg or SamplingConfig()
    device = next(model.parameters()).device
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    answers: list[str] = []
    lengths: list[int] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[start:start + cfg.batch_size]
        ids = [encode_prompt(tokenizer, p, cfg.max_prompt_length) for p in chunk]
        batch = {k: v.to(device) for k, v in collate_prompts(ids, tokenizer.pad_token_id).items()}
        kwargs = dict(max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id,
                      num_return_sequences=num_return_sequences)
        if cfg.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=max(cfg.temperature, 1e-4), top_p=cfg.top_p,
                          top_k=0)
        out = model.generate(**batch, **kwargs)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        lengths.extend(answer_length(row, tokenizer.eos_token_id) for row in new_tokens.tolist())
    if was_training:
        model.train()
    return [a.strip() for a in answers], lengths
