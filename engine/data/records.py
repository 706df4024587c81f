"""Internal records: their kinds and fields, the errors a row or a file can raise, chat
messages, and the validation every imported or edited row goes through.

Internal records: SFT ``{prompt, response}``, preference ``{prompt, chosen, rejected}``; a
prompt is a string or a list of chat messages ``{role, content}``.
"""
from __future__ import annotations

from typing import Any

KINDS = ("sft", "preference")
DEFAULT_MAX_CHARS = 20_000
BATCH_SIZE = 1000
ANSWER_FIELDS = {"sft": ("response",), "preference": ("chosen", "rejected")}
FIELD_NAMES = "_source_fields"  # internal field -> the file's field, for messages only


class DataFormatError(ValueError):
    """The file as a whole cannot be read (not JSON, not Parquet, unknown format...)."""


class RowError(ValueError):
    """One row that cannot be imported: a stable `code` and a plain English reason."""

    def __init__(self, code: str, reason: str, **params: Any):
        super().__init__(reason)
        self.code, self.reason, self.params = code, reason, params


def missing(field_name: str) -> RowError:
    return RowError("missing_field", f"missing field {field_name!r}", field=field_name)


def empty(field_name: str) -> RowError:
    return RowError("empty_text", f"empty text in {field_name!r}", field=field_name)


# -- chat messages ---------------------------------------------------------------------
ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
                "chatgpt": "assistant", "bot": "assistant", "model": "assistant",
                "bard": "assistant", "bing": "assistant", "system": "system"}


def messages_of(value: Any, field_name: str) -> list[dict]:
    """A list of chat turns ({role, content} or ShareGPT {from, value}) as {role, content}."""
    if not isinstance(value, list) or not value:
        raise RowError("bad_messages", f"{field_name!r} is not a non-empty list of messages",
                       field=field_name)
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise RowError("bad_messages", f"{field_name!r}: turn {i + 1} is not an object",
                           field=field_name)
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        role = ROLE_ALIASES.get(str(role).lower()) if role is not None else None
        if role is None:
            raise RowError("bad_messages", f"{field_name!r}: turn {i + 1} has no known role "
                           f"(user, assistant, system)", field=field_name)
        if not isinstance(content, str):
            raise RowError("bad_messages", f"{field_name!r}: turn {i + 1} has no text content",
                           field=field_name)
        out.append({"role": role, "content": content})
    return out


def prompt_chars(prompt: Any) -> int:
    if isinstance(prompt, list):
        return sum(len(m["content"]) for m in prompt)
    return len(prompt)


def prompt_text(prompt: Any) -> str:
    """A prompt as one readable text (chat prompts: one "role: content" line per turn)."""
    if isinstance(prompt, list):
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    return prompt


ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
TURN_SEPARATOR = "\n"


def conversation_text(prompt: Any, roles: dict[str, str] | None = None,
                      sep: str = TURN_SEPARATOR) -> str:
    """A prompt as a person reads it: a string as it is; a chat as its turns, one
    "Role: content" per turn joined by `sep` (role names from `roles`, e.g. translated;
    English by default), never as JSON. The inverse is `conversation_from_text`."""
    if not isinstance(prompt, list):
        return "" if prompt is None else str(prompt)
    labels = {**ROLE_LABELS, **(roles or {})}
    return sep.join(f"{labels.get(str(m.get('role')), str(m.get('role')).capitalize())}: "
                    f"{m.get('content', '')}" for m in prompt if isinstance(m, dict))


def conversation_from_text(text: Any, roles: dict[str, str] | None = None,
                           sep: str = TURN_SEPARATOR) -> list[dict] | None:
    """The chat messages of a text written by `conversation_text` (same `roles` and `sep`;
    role names also read in English, any case), or None when the text does not start with
    a role name (plain text). A turn runs until `sep` followed by the next role name."""
    import re

    if not isinstance(text, str):
        return None
    by_label: dict[str, str] = {}
    for table in (ROLE_LABELS, roles or {}):
        for role, label in table.items():
            by_label[label.casefold()] = role
    names = "|".join(sorted((re.escape(label) for label in by_label), key=len, reverse=True))
    head = re.compile(rf"({names}):[ \t]?", re.IGNORECASE)
    if not head.match(text.lstrip()):
        return None
    parts = re.split(rf"{re.escape(sep)}(?=(?:{names}):)", text.strip(), flags=re.IGNORECASE)
    out = []
    for part in parts:
        m = head.match(part)
        if m is None:  # cannot happen after the split; kept as text of the previous turn
            out[-1]["content"] += sep + part
            continue
        out.append({"role": by_label[m.group(1).casefold()], "content": part[m.end():].strip()})
    return out


def _is_blank(prompt: Any) -> bool:
    if isinstance(prompt, list):
        return not any(m["content"].strip() for m in prompt)
    return not prompt.strip()


def split_last_answer(conversation: list[dict], field_name: str) -> tuple[list[dict], str]:
    """(prompt turns, answer): the last turn must be the assistant's, after a user turn."""
    if conversation[-1]["role"] != "assistant":
        raise RowError("bad_messages", f"{field_name!r} does not end with an assistant turn",
                       field=field_name)
    prompt = conversation[:-1]
    if not any(m["role"] == "user" for m in prompt):
        raise RowError("bad_messages", f"{field_name!r} has no user turn before the answer",
                       field=field_name)
    return prompt, conversation[-1]["content"]


def shared_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    """Two whole conversations → (their shared prefix, chosen answer, rejected answer)."""
    prompt, good = split_last_answer(chosen, "chosen")
    other, bad = split_last_answer(rejected, "rejected")
    if prompt != other:
        raise RowError("prefix_mismatch",
                       "chosen and rejected differ before their last assistant turn")
    return prompt, good, bad


def validate(rec: dict, kind: str, max_chars: int = DEFAULT_MAX_CHARS) -> dict:
    """Check an internal record: non-empty texts, chosen != rejected, within the length limit.
    Problems name the file's own field (e.g. alpaca's "output" for the response)."""
    names = rec.pop(FIELD_NAMES, None) or {}

    def src(name: str) -> str:
        return names.get(name, name)

    prompt = rec.get("prompt")
    if prompt is None:
        raise missing(src("prompt"))
    if _is_blank(prompt):
        raise empty(src("prompt"))
    for name in ANSWER_FIELDS[kind]:
        value = rec.get(name)
        if value is None:
            raise missing(src(name))
        if not isinstance(value, str):
            raise RowError("bad_type", f"{src(name)!r} is not text", field=src(name))
        if not value.strip():
            raise empty(src(name))
    if kind == "preference" and rec["chosen"].strip() == rec["rejected"].strip():
        raise RowError("same_answers", "chosen == rejected")
    if max_chars:
        for name in ("prompt",) + ANSWER_FIELDS[kind]:
            n = prompt_chars(rec[name]) if name == "prompt" else len(rec[name])
            if n > max_chars:
                raise RowError("too_long", f"over the length limit: {src(name)!r} has {n} "
                               f"characters (max {max_chars})", field=src(name), chars=n,
                               max=max_chars)
    return rec


def _has_surrogates(value: Any) -> bool:
    """Text read with errors="surrogateescape" keeps undecodable bytes as lone surrogates."""
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value) if not value.isascii() else False
    if isinstance(value, dict):
        return any(_has_surrogates(v) or _has_surrogates(k) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogates(v) for v in value)
    return False
