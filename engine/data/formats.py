"""File formats: which one a raw row is in, and how each maps to an internal record.

- ``trl``: TRL standard (``prompt/completion``, ``prompt/chosen/rejected``) and
  conversational (``messages``, or message lists in those fields; a preference row whose
  ``chosen``/``rejected`` are whole conversations has its shared prefix as the prompt and
  the last assistant turn as the answer);
- ``hh``: Anthropic HH-RLHF transcripts (``"\\n\\nHuman: … \\n\\nAssistant: …"``): the shared
  dialogue becomes the prompt as chat messages, the last assistant turns the answers;
- ``alpaca``: ``instruction/input/output`` (``chosen/rejected`` for preferences);
- ``sharegpt``: ``conversations`` of ``{from, value}`` turns.
"""
from __future__ import annotations

import re
from typing import Any

from engine.data.records import (DEFAULT_MAX_CHARS, FIELD_NAMES, RowError, _has_surrogates,
                                 messages_of, missing, shared_prompt, split_last_answer,
                                 validate)

FORMATS = ("auto", "trl", "hh", "alpaca", "sharegpt")


HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def parse_hh(text: Any, field_name: str) -> list[dict]:
    """An HH-RLHF transcript "\\n\\nHuman: … \\n\\nAssistant: …" as chat messages."""
    if not isinstance(text, str):
        raise RowError("bad_transcript", f"{field_name!r} is not a text transcript",
                       field=field_name)
    marks = list(HH_TURN.finditer(text))
    if not marks or text[:marks[0].start()].strip():
        raise RowError("bad_transcript", f"{field_name!r} is not an HH transcript "
                       f"(no \\n\\nHuman: / \\n\\nAssistant: turns)", field=field_name)
    turns = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        turns.append({"role": "user" if m.group(1) == "Human" else "assistant",
                      "content": text[m.end():end].strip()})
    return turns


def _strip_hh_answer(text: str) -> str:
    return re.sub(r"^\s*(?:\n\n)?Assistant:[ \t]?", "", text).strip() \
        if text.lstrip().startswith("Assistant:") else text

def detect_format(record: dict) -> str | None:
    """The format a record looks like, or None."""
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record:
        return "alpaca"
    chosen, prompt = record.get("chosen"), record.get("prompt")
    if _looks_hh(prompt) or (prompt is None and "messages" not in record and _looks_hh(chosen)):
        return "hh"
    if record.keys() & {"prompt", "messages", "chosen", "rejected", "completion"}:
        return "trl"
    return None


def _looks_hh(text: Any) -> bool:
    return isinstance(text, str) and "Assistant:" in text \
        and ("\n\nHuman:" in text or text.lstrip().startswith("Human:"))


def detect_kind(record: dict) -> str:
    if "chosen" in record or "rejected" in record:
        return "preference"
    if isinstance(record.get("output"), list) and "instruction" in record:
        return "preference"
    return "sft"


def _text_field(record: dict, name: str) -> str:
    if name not in record or record[name] is None:
        raise missing(name)
    value = record[name]
    if not isinstance(value, str):
        raise RowError("bad_type", f"{name!r} is not text", field=name)
    return value


def _answer(record: dict, name: str) -> str:
    """An answer: a string, or a one-turn assistant message list (TRL conversational)."""
    if name not in record or record[name] is None:
        raise missing(name)
    value = record[name]
    if isinstance(value, dict):  # ShareGPT preference: {"from": "gpt", "value": ...}
        value = [value]
    if isinstance(value, list):
        turns = messages_of(value, name)
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise RowError("bad_messages", f"{name!r} must be one assistant message",
                           field=name)
        return turns[0]["content"]
    if not isinstance(value, str):
        raise RowError("bad_type", f"{name!r} is not text", field=name)
    return value


def _prompt(record: dict, name: str = "prompt") -> Any:
    if name not in record or record[name] is None:
        raise missing(name)
    value = record[name]
    if isinstance(value, list):
        return messages_of(value, name)
    if not isinstance(value, str):
        raise RowError("bad_type", f"{name!r} is not text or a list of messages", field=name)
    return value


def _trl(record: dict, kind: str) -> dict:
    if kind == "sft":
        if "prompt" not in record and "messages" in record:
            prompt, answer = split_last_answer(messages_of(record["messages"], "messages"),
                                               "messages")
            return {"prompt": prompt, "response": answer,
                    FIELD_NAMES: {"prompt": "messages", "response": "messages"}}
        prompt = _prompt(record)
        name = "completion" if "completion" in record or "response" not in record else "response"
        return {"prompt": prompt, "response": _answer(record, name), FIELD_NAMES: {"response": name}}
    if "prompt" not in record:
        if isinstance(record.get("chosen"), list) and isinstance(record.get("rejected"), list):
            prompt, good, bad = shared_prompt(messages_of(record["chosen"], "chosen"),
                                              messages_of(record["rejected"], "rejected"))
            return {"prompt": prompt, "chosen": good, "rejected": bad}
        raise missing("prompt")
    return {"prompt": _prompt(record), "chosen": _answer(record, "chosen"),
            "rejected": _answer(record, "rejected")}


def _hh(record: dict, kind: str) -> dict:
    if isinstance(record.get("prompt"), str):  # pre-split variant: prompt transcript + answers
        prompt = parse_hh(record["prompt"], "prompt")
        if prompt and prompt[-1]["role"] == "assistant" and not prompt[-1]["content"]:
            prompt = prompt[:-1]  # the trailing "\n\nAssistant:" header
        if kind == "sft":
            name = "completion" if "completion" in record else "chosen"
            return {"prompt": prompt, "response": _strip_hh_answer(_text_field(record, name))}
        return {"prompt": prompt,
                "chosen": _strip_hh_answer(_text_field(record, "chosen")),
                "rejected": _strip_hh_answer(_text_field(record, "rejected"))}
    if kind == "sft":
        name = "chosen" if "chosen" in record or "text" not in record else "text"
        prompt, answer = split_last_answer(parse_hh(_text_field(record, name), name), name)
        return {"prompt": prompt, "response": answer,
                FIELD_NAMES: {"prompt": name, "response": name}}
    good = parse_hh(_text_field(record, "chosen"), "chosen")
    bad = parse_hh(_text_field(record, "rejected"), "rejected")
    prompt, good_answer, bad_answer = shared_prompt(good, bad)
    return {"prompt": prompt, "chosen": good_answer, "rejected": bad_answer}


def _alpaca(record: dict, kind: str) -> dict:
    instruction = _text_field(record, "instruction")
    extra = record.get("input")
    user = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
    system, history = record.get("system"), record.get("history")
    if (isinstance(system, str) and system.strip()) or history:
        prompt: Any = [{"role": "system", "content": system}] \
            if isinstance(system, str) and system.strip() else []
        for pair in history or []:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str)
                                                                       for x in pair)):
                raise RowError("bad_messages", "'history' is not a list of [question, answer]",
                               field="history")
            prompt += [{"role": "user", "content": pair[0]},
                       {"role": "assistant", "content": pair[1]}]
        prompt.append({"role": "user", "content": user})
    else:
        prompt = user
    if kind == "sft":
        return {"prompt": prompt, "response": _text_field(record, "output"),
                FIELD_NAMES: {"prompt": "instruction", "response": "output"}}
    output = record.get("output")
    if "chosen" not in record and isinstance(output, list) and len(output) == 2:
        record = {**record, "chosen": output[0], "rejected": output[1]}
    return {"prompt": prompt, "chosen": _answer(record, "chosen"),
            "rejected": _answer(record, "rejected"), FIELD_NAMES: {"prompt": "instruction"}}


def _sharegpt(record: dict, kind: str) -> dict:
    if "conversations" not in record or record["conversations"] is None:
        raise missing("conversations")
    turns = messages_of(record["conversations"], "conversations")
    system = record.get("system")
    if isinstance(system, str) and system.strip() and turns[0]["role"] != "system":
        turns = [{"role": "system", "content": system}] + turns
    if kind == "sft":
        prompt, answer = split_last_answer(turns, "conversations")
        return {"prompt": prompt, "response": answer,
                FIELD_NAMES: {"prompt": "conversations", "response": "conversations"}}
    if turns[-1]["role"] == "assistant" and "chosen" not in record:
        raise missing("chosen")
    if not any(m["role"] == "user" for m in turns):
        raise RowError("bad_messages", "'conversations' has no user turn", field="conversations")
    return {"prompt": turns, "chosen": _answer(record, "chosen"),
            "rejected": _answer(record, "rejected"), FIELD_NAMES: {"prompt": "conversations"}}


NORMALISERS = {"trl": _trl, "hh": _hh, "alpaca": _alpaca, "sharegpt": _sharegpt}


def normalise(record: Any, kind: str, fmt: str, max_chars: int = DEFAULT_MAX_CHARS) -> dict:
    """One raw file record → a validated internal record (raises RowError with the reason)."""
    if not isinstance(record, dict):
        raise RowError("not_object", "not a JSON object")
    if _has_surrogates(record):
        raise RowError("not_utf8", "not UTF-8")
    if fmt == "auto":
        fmt = detect_format(record) or "trl"
    rec = NORMALISERS[fmt](record, kind)
    split = record.get("split")
    if split in ("train", "eval"):
        rec["split"] = split
    meta = record.get("meta")
    if isinstance(meta, dict) and meta:
        rec["meta"] = meta
    return validate(rec, kind, max_chars)
