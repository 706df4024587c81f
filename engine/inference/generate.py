"""Sampling: for the compare page, the "try it" jobs and in-app preference collection."""
from __future__ import annotations

import functools
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


DECODE_CACHES = ("dynamic", "static")


def generation_cache_options(decode_cache: str, device) -> dict:
    """transformers' generate options of the RL stages' `decode_cache` setting:
    "dynamic" — the KV cache grows step by step (transformers' default; the sampling loop of
    `sample_groups` pre-allocates it, `_reserve`); "static" — a KV cache of fixed size
    allocated once (`cache_implementation="static"`), which on CUDA lets transformers
    compile the decoding step (torch.compile, CUDA graphs: no per-token Python and launch
    overhead). Measured on a GPU before it becomes anyone's default (bench/RESULTS.md)."""
    if decode_cache not in DECODE_CACHES:
        raise ValueError(f"decode_cache {decode_cache!r} is not one of {DECODE_CACHES}")
    return {"cache_implementation": "static"} if decode_cache == "static" else {}


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering as transformers' TopPLogitsWarper: the smallest set of tokens whose
    probabilities add up to more than top_p keeps its scores, the rest get −inf."""
    if top_p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, descending=False)
    remove = sorted_scores.softmax(-1).cumsum(-1) <= (1 - top_p)
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


@torch.no_grad()
def sample_groups(model, query: torch.Tensor, query_mask: torch.Tensor, group_size: int, *,
                  max_new_tokens: int, temperature: float, top_p: float, eos_token_id: int,
                  pad_token_id: int, decode_cache: str = "dynamic"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`group_size` sampled answers to each left-padded prompt of `query` [B, P] (rows
    b·G … b·G+G−1 answer prompt b), and the log-prob of each sampled token under the
    distribution it was drawn from before top-p, log softmax(z_t / T)[y_t]:
    (tokens [B·G, T'], log-probs [B·G, T']), T' ≤ max_new_tokens, pad after EOS.

    What `model.generate(..., num_return_sequences=G, do_sample=True, top_k=0)` draws, with
    the same random numbers (temperature, top-p, one multinomial draw per row and step, pad
    after EOS, stop when every row has ended), but each prompt is computed once and its KV
    cache repeated G times (transformers repeats the prompt before its prefill), the LM head
    runs on the last position only, and no [steps, B·G, V] logits are kept: the log-probs are
    taken step by step (objectives.logprobs_from_logits).

    decode_cache="static" (`generation_cache_options`) samples through transformers'
    `generate` itself with a static KV cache (the prompt repeated G times, compiled decoding
    on CUDA) and takes the log-probs from its logits: the same distribution, another path.
    """
    from engine.objectives import logprobs_from_logits

    if decode_cache != "dynamic":
        return _sample_groups_generate(model, query, query_mask, group_size,
                                       max_new_tokens=max_new_tokens, temperature=temperature,
                                       top_p=top_p, eos_token_id=eos_token_id,
                                       pad_token_id=pad_token_id, decode_cache=decode_cache)
    G = group_size
    cache_arg = _cache_argument(model)
    position_ids = (query_mask.long().cumsum(-1) - 1).masked_fill(query_mask == 0, 1)
    out = model(input_ids=query, attention_mask=query_mask, position_ids=position_ids,
                use_cache=True, logits_to_keep=1)
    cache = _cache_of(out)
    cache.batch_repeat_interleave(G)
    _reserve(cache, max_new_tokens)
    logits = out.logits[:, -1].repeat_interleave(G, 0)
    mask = query_mask.repeat_interleave(G, 0)
    last = position_ids[:, -1:].repeat_interleave(G, 0)
    unfinished = torch.ones(mask.shape[0], dtype=torch.bool, device=query.device)
    tokens, logps = [], []
    for t in range(max_new_tokens):
        z = logits.float()
        scores = z / temperature if temperature != 1.0 else z
        probs = torch.softmax(top_p_filter(scores, top_p), dim=-1)
        nxt = torch.multinomial(probs, num_samples=1).squeeze(1)
        nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad_token_id))
        tokens.append(nxt)
        logps.append(logprobs_from_logits(z, nxt, temperature))
        unfinished &= nxt != eos_token_id
        if not bool(unfinished.any()) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        last = last + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last,
                    use_cache=True, **{cache_arg: cache})
        cache, logits = _cache_of(out), out.logits[:, -1]
    return torch.stack(tokens, 1), torch.stack(logps, 1)


def _sample_groups_generate(model, query, query_mask, group_size, *, max_new_tokens,
                            temperature, top_p, eos_token_id, pad_token_id, decode_cache):
    """`sample_groups` through `model.generate(num_return_sequences=G)` with the cache
    options of `decode_cache`; log-probs from the returned logits (before top-p)."""
    from transformers import GenerationConfig

    from engine.objectives import logprobs_from_logits

    gen = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                           max_new_tokens=max_new_tokens, use_cache=True,
                           num_return_sequences=group_size, pad_token_id=pad_token_id,
                           eos_token_id=eos_token_id, return_dict_in_generate=True,
                           output_logits=True,
                           **generation_cache_options(decode_cache, query.device))
    out = model.generate(input_ids=query, attention_mask=query_mask, generation_config=gen)
    tokens = out.sequences[:, query.shape[1]:]
    logits = torch.stack(out.logits, 1).float()
    return tokens, logprobs_from_logits(logits, tokens, temperature)


def _cache_argument(model) -> str:
    """The forward's name of the KV cache argument: `cache` (transformers ≥ 5.2x), else the
    older `past_key_values`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters \
        else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _reserve(cache, extra: int) -> None:
    """Give each plain dynamic layer of a KV cache room for `extra` more positions, so that a
    decoding step writes its keys and values in place instead of copying the whole cache
    (transformers' DynamicLayer concatenates at every step)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # an older transformers: keep its cache as it is
        return
    for layer in getattr(cache, "layers", []):
        if type(layer) is not DynamicLayer or not layer.is_initialized:
            continue
        n = layer.keys.shape[-2]
        for name in ("keys", "values"):
            t = getattr(layer, name)
            buf = t.new_empty(*t.shape[:-2], n + extra, t.shape[-1])
            buf[..., :n, :] = t
            setattr(layer, "_" + name, buf)
            setattr(layer, name, buf[..., :n, :])
        layer.__class__ = _reserved_layer()


@functools.lru_cache(maxsize=1)
def _reserved_layer():
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        """A DynamicLayer whose keys and values are views of a buffer with room to grow."""

        def update(self, key_states, value_states, *args, **kwargs):
            n, m = self.keys.shape[-2], key_states.shape[-2]
            if n + m > self._keys.shape[-2]:
                return super().update(key_states, value_states, *args, **kwargs)
            self._keys[..., n:n + m, :] = key_states
            self._values[..., n:n + m, :] = value_states
            self.keys, self.values = self._keys[..., :n + m, :], self._values[..., :n + m, :]
            return self.keys, self.values

    return ReservedLayer
