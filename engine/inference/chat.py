"""Chat templates, tokenisation and collation shared by every stage.

Prompts are a string or a list of chat messages. Everything goes through the model's
chat template; a model without one gets a plain "User:/Assistant:" template so tiny
test models and base models still work. Training and scoring pad on the right,
generation on the left; the pad token is never EOS (see models.prepare_tokenizer).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}"
)


def to_messages(prompt) -> list[dict]:
    """A prompt as chat messages: a plain string becomes one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def prompt_text(prompt) -> str:
    """A short readable form of a prompt (the last user turn for conversations)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else (prompt[-1]["content"] if prompt else "")


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_TEMPLATE


def _ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    ensure_chat_template(tokenizer)
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                        tokenize=True)
    if hasattr(out, "keys"):  # BatchEncoding in recent transformers
        out = out["input_ids"]
    if out and isinstance(out[0], list):
        out = out[0]
    return list(out)


def encode_prompt(tokenizer, prompt, max_prompt_length: int | None = None) -> list[int]:
    """Token ids of a prompt followed by the assistant header (ready to generate)."""
    ids = _ids(tokenizer, to_messages(prompt), add_generation_prompt=True)
    if max_prompt_length and len(ids) > max_prompt_length:
        ids = ids[-max_prompt_length:]  # keep the end: the question and the assistant header
    return ids


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def encode_completion(tokenizer, prompt, response: str, max_length: int) -> Encoded:
    """Prompt + response through the chat template; labels only on the response.

    The response part ends with the template's end-of-turn token (EOS for chat models),
    so the model learns to stop. Tokens the template adds after it are not trained on.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    full = _ids(tokenizer, to_messages(prompt) + [{"role": "assistant", "content": response}],
                add_generation_prompt=False)
    if full[: len(prompt_ids)] != prompt_ids:
        # templates that rewrite earlier turns: fall back to concatenation
        full = prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"] \
            + [tokenizer.eos_token_id]
    return completion_ids(prompt_ids, full[len(prompt_ids):], tokenizer.eos_token_id,
                          max_length)


def completion_ids(prompt_ids: list[int], response_ids: list[int], eos: int,
                   max_length: int) -> Encoded:
    """Prompt ids + response ids as `encode_completion` lays them out: the response cut
    after its first EOS (or EOS appended), then both cut to `max_length` (the prompt's end
    and the response's start kept)."""
    if eos in response_ids:
        response_ids = response_ids[: response_ids.index(eos) + 1]
    else:
        response_ids = list(response_ids) + [eos]
    truncated = False
    if len(prompt_ids) + len(response_ids) > max_length:
        truncated = True
        keep_prompt = min(len(prompt_ids), max(max_length // 2, max_length - len(response_ids)))
        prompt_ids = prompt_ids[-keep_prompt:]
        response_ids = response_ids[: max_length - len(prompt_ids)]
    return Encoded(list(prompt_ids) + list(response_ids),
                   [IGNORE_INDEX] * len(prompt_ids) + list(response_ids), truncated)


def pad_right(seqs: list[list[int]], pad_value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [pad_value] * (width - len(s)) for s in seqs],
                        dtype=torch.long)


def pad_left(seqs: list[list[int]], pad_value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([[pad_value] * (width - len(s)) + list(s) for s in seqs],
                        dtype=torch.long)


def collate_completions(batch: list[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask, and labels (-100 on prompt and padding)."""
    input_ids = pad_right([e.input_ids for e in batch], pad_token_id)
    labels = pad_right([e.labels for e in batch], IGNORE_INDEX)
    attention_mask = pad_right([[1] * len(e.input_ids) for e in batch], 0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_prompts(prompt_ids: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts for generation."""
    return {"input_ids": pad_left(prompt_ids, pad_token_id),
            "attention_mask": pad_left([[1] * len(p) for p in prompt_ids], 0)}
