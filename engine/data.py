"""Datasets in and out: importers, validation, TRL export, statistics, splits, samples.

Files: JSONL, JSON, CSV and Parquet, read as a stream (line by line, or batch by batch
for Parquet) and written in batches, so tens of thousands of rows import without holding
the page. Formats (detected from the first recognisable row, or chosen):

- ``trl``: TRL standard (``prompt/completion``, ``prompt/chosen/rejected``) and
  conversational (``messages``, or message lists in those fields; a preference row whose
  ``chosen``/``rejected`` are whole conversations has its shared prefix as the prompt and
  the last assistant turn as the answer);
- ``hh``: Anthropic HH-RLHF transcripts (``"\\n\\nHuman: … \\n\\nAssistant: …"``): the shared
  dialogue becomes the prompt as chat messages, the last assistant turns the answers;
- ``alpaca``: ``instruction/input/output`` (``chosen/rejected`` for preferences);
- ``sharegpt``: ``conversations`` of ``{from, value}`` turns.

Internal records: SFT ``{prompt, response}``, preference ``{prompt, chosen, rejected}``; a
prompt is a string or a list of chat messages. Every rejected row is reported with its
line number and the reason. A staged import lands whole or not at all, and never replaces
an existing dataset unless asked to (append, a new name, or overwrite).

No Streamlit and no torch here.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from engine.cli import print_json, store_of
from storage import DatasetExists, NotFound, Store
from storage.db import _default_split

KINDS = ("sft", "preference")
FORMATS = ("auto", "trl", "hh", "alpaca", "sharegpt")
FILE_TYPES = ("jsonl", "json", "csv", "parquet")
MODES = ("new", "append", "overwrite")
DEFAULT_MAX_CHARS = 20_000
BATCH_SIZE = 1000
TEMP_PREFIX = "~import-"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
SAMPLES = {"sample-sft": ("sft", "sample_sft.jsonl"),
           "sample-preferences": ("preference", "sample_preferences.jsonl")}
ANSWER_FIELDS = {"sft": ("response",), "preference": ("chosen", "rejected")}
FIELD_NAMES = "_source_fields"  # internal field -> the file's field, for messages only

Progress = Callable[[float, int], None]  # (fraction of the file read, rows read so far)


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


@dataclass
class ImportReport:
    dataset: str
    kind: str | None = None
    format: str | None = None
    file_type: str | None = None
    mode: str = "new"
    imported: int = 0
    read: int = 0
    rejected: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def reject(self, line: int, error: RowError) -> None:
        self.rejected.append({"line": line, "reason": error.reason, "code": error.code,
                              **error.params})

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "kind": self.kind, "format": self.format,
                "file_type": self.file_type, "mode": self.mode, "read": self.read,
                "imported": self.imported, "rejected": self.rejected,
                "seconds": round(self.seconds, 3)}


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


# -- formats ---------------------------------------------------------------------------
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


def _has_surrogates(value: Any) -> bool:
    """Text read with errors="surrogateescape" keeps undecodable bytes as lone surrogates."""
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value) if not value.isascii() else False
    if isinstance(value, dict):
        return any(_has_surrogates(v) or _has_surrogates(k) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogates(v) for v in value)
    return False


# -- reading files as streams ----------------------------------------------------------
def file_type_of(name: str | None, head: bytes = b"") -> str:
    """jsonl, json, csv or parquet, from the file name, else from its first bytes."""
    suffix = Path(name or "").suffix.lower()
    by_suffix = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                 ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if head.startswith(b"PAR1"):
        return "parquet"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{"):
        return "jsonl"
    raise DataFormatError(f"cannot tell the type of {name or 'the file'!r}: "
                          f"use .jsonl, .json, .csv or .parquet")


def _open(source: Any, filename: str | None) -> tuple[BinaryIO, str | None, int, bool]:
    """(binary file, name, size in bytes, whether we opened it) for a path, bytes or a file."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        return open(path, "rb"), filename or path.name, path.stat().st_size, True
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(bytes(source)), filename, len(source), True
    name = filename or getattr(source, "name", None)
    size = getattr(source, "size", None)
    if size is None:
        pos = source.tell()
        source.seek(0, io.SEEK_END)
        size = source.tell()
        source.seek(pos)
    source.seek(0)
    return source, name, int(size), False


Item = tuple[int, Any, float]  # (line number, record or RowError, fraction read)


def _iter_jsonl(fh: BinaryIO, size: int) -> Iterator[Item]:
    for number, raw in enumerate(fh, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        frac = fh.tell() / size if size else 1.0
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, RowError("not_utf8", f"not UTF-8 (byte {raw[exc.start]:#04x} at "
                                   f"column {exc.start + 1})"), frac
            continue
        try:
            yield number, json.loads(text), frac
        except json.JSONDecodeError as exc:
            yield number, RowError("invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})"), frac


def _line_of(text: str, pos: int, cache: list) -> int:
    # count newlines incrementally: records come in order
    last_pos, last_line = cache
    line = last_line + text.count("\n", last_pos, pos)
    cache[:] = [pos, line]
    return line


def _iter_json(fh: BinaryIO, size: int) -> Iterator[Item]:
    """A JSON array of objects (or an object holding one under data/rows/train/examples).
    Elements are decoded one by one, so each is numbered by the line it starts on."""
    text = fh.read().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    decoder = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if text[pos:pos + 1] == "{":
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        if text[end:].strip():  # several objects: really JSON Lines
            yield from _iter_jsonl(io.BytesIO(text.encode("utf-8", "surrogateescape")), size)
            return
        for key in ("data", "rows", "train", "examples", "records"):
            if isinstance(obj.get(key), list):
                items = obj[key]
                for i, item in enumerate(items):
                    yield i + 1, item, (i + 1) / len(items)
                return
        yield 1, obj, 1.0
        return
    if text[pos:pos + 1] != "[":
        raise DataFormatError("a .json file must hold an array of objects")
    pos += 1
    cache = [0, 1]
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos < n and text[pos] == "]":
            return
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        yield _line_of(text, pos, cache), item, end / n if n else 1.0
        pos = end
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos < n and text[pos] == ",":
            pos += 1
        elif pos < n and text[pos] == "]":
            return
        else:
            line = _line_of(text, min(pos, n), cache)
            raise DataFormatError(f"invalid JSON at line {line}: expected ',' or ']'")


def _csv_cell(value: Any) -> Any:
    """CSV cells are text; a cell holding a JSON list or object (messages, meta) is decoded."""
    if isinstance(value, str):
        s = value.strip()
        if (s.startswith("[") and s.endswith("]")) or (s.startswith("{") and s.endswith("}")):
            try:
                decoded = json.loads(s)
            except json.JSONDecodeError:
                return value
            if isinstance(decoded, dict) or (isinstance(decoded, list)
                                             and all(isinstance(x, (dict, str)) for x in decoded)):
                return decoded
    return value


def _iter_csv(fh: BinaryIO, size: int, delimiter: str = ",") -> Iterator[Item]:
    csv.field_size_limit(2**31 - 1)  # long texts are judged by max_chars, row by row
    text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        reader = csv.DictReader(text, delimiter=delimiter)
        previous_end = 1  # the header line
        for row in reader:
            start, previous_end = previous_end + 1, reader.line_num
            record = {k: _csv_cell(v) for k, v in row.items() if k is not None and v is not None}
            frac = min(1.0, fh.tell() / size) if size else 1.0
            yield start, record, frac
    except csv.Error as exc:
        raise DataFormatError(f"invalid CSV: {exc}") from exc
    finally:
        text.detach()


def _iter_parquet(fh: BinaryIO, size: int) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(fh)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
        raise DataFormatError(f"not a Parquet file: {exc}") from exc
    total = pf.metadata.num_rows or 1
    number = 0
    for batch in pf.iter_batches(batch_size=BATCH_SIZE):
        for row in batch.to_pylist():
            number += 1
            yield number, _decode_bytes(row), number / total


def _decode_bytes(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    if isinstance(value, dict):
        return {k: _decode_bytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_bytes(v) for v in value]
    return value


def iter_file(source: Any, filename: str | None = None,
              file_type: str | None = None) -> Iterator[tuple[int, Any, float]]:
    """(line number, raw record or RowError, fraction read) for every record of a file."""
    fh, name, size, opened = _open(source, filename)
    try:
        head = fh.read(64)
        fh.seek(0)
        kind = file_type or file_type_of(name, head)
        if kind not in FILE_TYPES:
            raise DataFormatError(f"file type {kind!r} is not one of {FILE_TYPES}")
        if kind == "jsonl":
            yield from _iter_jsonl(fh, size)
        elif kind == "json":
            yield from _iter_json(fh, size)
        elif kind == "csv":
            delimiter = "\t" if Path(name or "").suffix.lower() == ".tsv" else ","
            yield from _iter_csv(fh, size, delimiter)
        else:
            yield from _iter_parquet(fh, size)
    finally:
        if opened:
            fh.close()


def read_records(source: Any, kind: str | None = None, fmt: str = "auto",
                 filename: str | None = None, max_chars: int = DEFAULT_MAX_CHARS,
                 report: ImportReport | None = None) -> Iterator[tuple[int, dict, float]]:
    """Valid internal records of a file, as (line, record, fraction read); every rejected
    row is added to `report`. With fmt="auto" (or kind=None) the format (kind) is taken
    from the first row that shows one, and then held for the whole file."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    report = report if report is not None else ImportReport("")
    pending: list[tuple[int, Any, float]] = []  # rows read before the format was known
    chosen = None if fmt == "auto" else fmt

    def handle(line: int, raw: Any, frac: float):
        report.read += 1
        if isinstance(raw, RowError):
            report.reject(line, raw)
            return None
        try:
            return line, normalise(raw, report.kind, chosen, max_chars), frac
        except RowError as exc:
            report.reject(line, exc)
            return None

    report.kind, report.format = kind, chosen
    for line, raw, frac in iter_file(source, filename):
        if report.kind is None or chosen is None:
            if isinstance(raw, dict) and detect_format(raw):
                if chosen is None:
                    chosen = report.format = detect_format(raw)
                if report.kind is None:
                    report.kind = detect_kind(raw)
            else:
                pending.append((line, raw, frac))
                continue
            for item in pending:
                out = handle(*item)
                if out:
                    yield out
            pending = []
        out = handle(line, raw, frac)
        if out:
            yield out
    for line, raw, _ in pending:  # no row showed a format
        report.read += 1
        report.reject(line, raw if isinstance(raw, RowError) else
                      RowError("unknown_format", "no known fields (prompt, chosen, messages, "
                               "instruction, conversations...)"))


# -- importing into the store ----------------------------------------------------------
def default_name(filename: str | None) -> str:
    stem = Path(filename or "dataset").stem
    return re.sub(r"[^\w\-. ]+", "-", stem).strip(" -.") or "dataset"


def import_file(store: Store, source: Any, kind: str | None = None, fmt: str = "auto",
                dataset: str | None = None, *, mode: str = "new", filename: str | None = None,
                max_chars: int = DEFAULT_MAX_CHARS, eval_fraction: float | None = None,
                description: str = "", progress: Progress | None = None,
                batch_size: int = BATCH_SIZE) -> ImportReport:
    """Import a file (path, bytes or file object) into dataset `dataset`.

    mode "new" refuses an existing name (DatasetExists, before anything is read);
    "append" adds to it (same kind); "overwrite" replaces it. Rows are staged in a hidden
    dataset and land in one transaction at the end, so a failed import (or one with no
    valid row) leaves the store exactly as it was.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    t0 = time.perf_counter()
    name_hint = filename or (str(source) if isinstance(source, (str, os.PathLike))
                             else getattr(source, "name", None))
    name = (dataset or default_name(name_hint)).strip()
    existing = _maybe_dataset(store, name)
    if existing is not None and mode == "new":
        raise DatasetExists(f"dataset {name!r} already exists: append to it, choose another "
                            f"name, or overwrite it")
    if existing is not None and mode == "append":
        if kind is not None and kind != existing["kind"]:
            raise ValueError(f"dataset {name!r} holds {existing['kind']} rows, not {kind} rows")
        kind = existing["kind"]
        fraction = existing["eval_fraction"] if eval_fraction is None else eval_fraction
        base = existing["rows"]
    else:
        fraction, base = 0.1 if eval_fraction is None else eval_fraction, 0
    report = ImportReport(name, kind=kind, mode=mode)
    fh_name = filename or name_hint
    temp = None
    batch: list[dict] = []

    def flush():
        nonlocal temp, batch
        if not batch:
            return
        if temp is None:
            temp = f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}"
            store.create_dataset(temp, report.kind, description=description,
                                 eval_fraction=fraction)
        store.add_rows(temp, batch, source=Path(fh_name or "").name)
        batch = []

    try:
        report.file_type = file_type_of(fh_name, _peek(source))
        for _line, rec, frac in read_records(source, kind, fmt, fh_name, max_chars, report):
            rec.setdefault("split", _default_split(base + report.imported, fraction))
            batch.append(rec)
            report.imported += 1
            if len(batch) >= batch_size:
                flush()
                if progress:
                    progress(min(1.0, frac), report.read)
        flush()
        if temp is not None:
            meta = {"imported_from": Path(fh_name or "").name, "format": report.format,
                    "file_type": report.file_type}
            _land(store, temp, name, mode, existing is not None, meta)
            temp = None
    finally:
        if temp is not None:  # failed midway: the staged rows go, the target is untouched
            try:
                store.delete_dataset(temp)
            except NotFound:
                pass
    if progress:
        progress(1.0, report.read)
    report.seconds = time.perf_counter() - t0
    return report


def _peek(source: Any) -> bytes:
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as fh:
                return fh.read(64)
        except OSError:
            return b""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:64])
    pos = source.tell()
    head = source.read(64)
    source.seek(pos)
    return head


def _land(store: Store, temp: str, name: str, mode: str, existed: bool, meta: dict) -> None:
    if mode == "append" and existed:
        store.move_rows(temp, name)
    elif mode == "overwrite":
        store.update_dataset(temp, meta=meta)
        store.replace_dataset(name, temp)
    else:
        if _maybe_dataset(store, name) is not None:  # created meanwhile by someone else
            raise DatasetExists(f"dataset {name!r} already exists")
        store.update_dataset(temp, meta=meta)
        store.replace_dataset(name, temp)


def _maybe_dataset(store: Store, name: str) -> dict | None:
    try:
        ds = store.get_dataset(name)
    except NotFound:
        return None
    return ds if ds["name"] == name else None


def cleanup_staged(store: Store, older_than_s: float = 3600) -> int:
    """Drop staging datasets left by an import that was killed (older than an hour)."""
    n = 0
    for ds in store.list_datasets():
        if ds["name"].startswith(TEMP_PREFIX) and time.time() - (ds["created"] or 0) > older_than_s:
            store.delete_dataset(ds["id"])
            n += 1
    return n


def list_datasets(store: Store, kind: str | None = None) -> list[dict]:
    """Datasets, without imports being staged."""
    return [d for d in store.list_datasets(kind) if not d["name"].startswith(TEMP_PREFIX)]


# -- export ----------------------------------------------------------------------------
def to_trl(row: dict, kind: str, extra: bool = False) -> dict:
    """An internal row in TRL format: standard for text prompts, conversational for chats."""
    prompt = row["prompt"]
    chat = isinstance(prompt, list)

    def answer(text: str) -> Any:
        return [{"role": "assistant", "content": text}] if chat else text

    if kind == "sft":
        out = {"prompt": prompt, "completion": answer(row["response"])}
    else:
        out = {"prompt": prompt, "chosen": answer(row["chosen"]),
               "rejected": answer(row["rejected"])}
    if extra:
        out["split"] = row.get("split")
        if row.get("meta"):
            out["meta"] = row["meta"]
    return out


def iter_rows(store: Store, dataset: str | int, split: str | None = None,
              page: int = BATCH_SIZE) -> Iterator[dict]:
    offset = 0
    while True:
        rows = store.list_rows(dataset, split=split, limit=page, offset=offset)
        yield from rows
        if len(rows) < page:
            return
        offset += page


def export_lines(store: Store, dataset: str | int, split: str | None = None,
                 extra: bool = False) -> Iterator[str]:
    kind = store.get_dataset(dataset)["kind"]
    for row in iter_rows(store, dataset, split):
        yield json.dumps(to_trl(row, kind, extra), ensure_ascii=False) + "\n"


def export_jsonl(store: Store, dataset: str | int, path: str | os.PathLike | None = None,
                 split: str | None = None, extra: bool = False) -> bytes | int:
    """TRL JSONL of a dataset: written to `path` (returns the row count) or returned as bytes."""
    if path is None:
        return "".join(export_lines(store, dataset, split, extra)).encode("utf-8")
    n = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for line in export_lines(store, dataset, split, extra):
            fh.write(line)
            n += 1
    return n


# -- editing, splits, statistics -------------------------------------------------------
def prompt_cell(prompt: Any) -> str:
    """A prompt as an editable cell: the text, or the message list as JSON."""
    return json.dumps(prompt, ensure_ascii=False) if isinstance(prompt, list) else prompt


def cell_prompt(text: Any) -> Any:
    """The inverse of prompt_cell: a JSON list of messages becomes a chat prompt again."""
    if isinstance(text, str) and text.strip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(value, list):
            return messages_of(value, "prompt")
    return "" if text is None else text


def save_edits(store: Store, dataset: str | int, updated: dict[int, dict] | None = None,
               added: Iterable[dict] = (), deleted: Iterable[int] = (),
               max_chars: int = DEFAULT_MAX_CHARS) -> list[dict]:
    """Apply edits from a table: {row id: changed fields}, new rows, deleted row ids.

    Every row is validated like an import; invalid ones are left as they were and
    returned as [{row, reason, code}] (row: the id, or "new N")."""
    ds = store.get_dataset(dataset)
    kind = ds["kind"]
    current = {r["id"]: r for r in iter_rows(store, ds["id"])} if updated else {}
    errors: list[dict] = []
    fields = ("prompt",) + ANSWER_FIELDS[kind] + ("split",)
    for row_id, changes in (updated or {}).items():
        row_id = int(row_id)
        if row_id not in current:
            continue
        changes = {k: v for k, v in changes.items() if k in fields}
        if "prompt" in changes:
            try:
                changes["prompt"] = cell_prompt(changes["prompt"])
            except RowError as exc:
                errors.append({"row": row_id, "reason": exc.reason, "code": exc.code})
                continue
        if changes.get("split") not in (None, "train", "eval"):
            changes.pop("split")
        merged = {**current[row_id], **changes}
        try:
            validate({k: merged.get(k) for k in ("prompt",) + ANSWER_FIELDS[kind]}, kind,
                     max_chars)
        except RowError as exc:
            errors.append({"row": row_id, "reason": exc.reason, "code": exc.code})
            continue
        if changes:
            store.update_row(ds["id"], row_id, changes)
    good = []
    for i, row in enumerate(added, start=1):
        rec = {k: row.get(k) for k in fields if row.get(k) not in (None, "")}
        try:
            if "prompt" in rec:
                rec["prompt"] = cell_prompt(rec["prompt"])
            validate(rec, kind, max_chars)
        except RowError as exc:
            errors.append({"row": f"new {i}", "reason": exc.reason, "code": exc.code})
            continue
        if rec.get("split") not in ("train", "eval"):
            rec.pop("split", None)
        good.append(rec)
    if good:
        store.add_rows(ds["id"], good, source="editor")
    deleted = [int(i) for i in deleted]
    if deleted:
        store.delete_rows(ds["id"], deleted)
    return errors


def resplit(store: Store, dataset: str | int, eval_fraction: float, seed: int = 0) -> dict:
    """Set a dataset's eval fraction and draw its eval rows again: round(n·f) rows, at
    random with `seed` (stable: the same seed gives the same split)."""
    if not 0 <= eval_fraction < 1:
        raise ValueError("eval fraction: must be at least 0 and below 1")
    ds = store.get_dataset(dataset)
    ids = [r["id"] for r in iter_rows(store, ds["id"])]
    k = round(len(ids) * eval_fraction)
    if eval_fraction > 0 and len(ids) >= 2:
        k = min(max(k, 1), len(ids) - 1)
    eval_ids = random.Random(seed).sample(ids, k) if k else []
    store.update_dataset(ds["id"], eval_fraction=float(eval_fraction))
    store.set_splits(ds["id"], eval_ids)
    return {"train": len(ids) - len(eval_ids), "eval": len(eval_ids)}


def _row_key(row: dict, kind: str) -> str:
    return json.dumps([row["prompt"]] + [row[f] for f in ANSWER_FIELDS[kind]],
                      ensure_ascii=False, sort_keys=True)


def dataset_stats(store: Store, dataset: str | int) -> dict:
    """Counts, length distributions (characters), duplicates, and (pairs) the length bias."""
    ds = store.get_dataset(dataset)
    kind = ds["kind"]
    splits: Counter = Counter()
    sources: Counter = Counter()
    lengths: dict[str, list[int]] = {"prompt": [], **{f: [] for f in ANSWER_FIELDS[kind]}}
    seen_rows, seen_prompts = set(), set()
    duplicate_ids: list[int] = []
    repeated_prompts = chat = longer = 0
    for row in iter_rows(store, ds["id"]):
        splits[row["split"]] += 1
        sources[row.get("source") or ""] += 1
        lengths["prompt"].append(prompt_chars(row["prompt"]))
        for f in ANSWER_FIELDS[kind]:
            lengths[f].append(len(row[f]))
        chat += isinstance(row["prompt"], list)
        key = _row_key(row, kind)
        if key in seen_rows:
            duplicate_ids.append(row["id"])
        seen_rows.add(key)
        pkey = json.dumps(row["prompt"], ensure_ascii=False, sort_keys=True)
        repeated_prompts += pkey in seen_prompts
        seen_prompts.add(pkey)
        if kind == "preference":
            longer += len(row["chosen"]) > len(row["rejected"])
    n = sum(splits.values())
    out = {"dataset": ds["name"], "kind": kind, "rows": n, "train": splits.get("train", 0),
           "eval": splits.get("eval", 0), "eval_fraction": ds["eval_fraction"],
           "chat_prompts": chat, "unique_prompts": len(seen_prompts),
           "repeated_prompts": repeated_prompts, "duplicates": len(duplicate_ids),
           "duplicate_ids": duplicate_ids, "lengths": lengths, "sources": dict(sources)}
    if kind == "preference":
        out["chosen_longer"] = longer / n if n else 0.0
    return out


# -- samples and prompts for other stages -------------------------------------------------
def ensure_sample_datasets(store: Store) -> list[str]:
    """Import the shipped samples as "sample-sft" and "sample-preferences" when absent.
    Returns the names created now."""
    created = []
    for name, (kind, filename) in SAMPLES.items():
        if _maybe_dataset(store, name) is not None:
            continue
        try:
            import_file(store, ASSETS / filename, kind=kind, fmt="trl", dataset=name,
                        description="sample", eval_fraction=0.1)
            created.append(name)
        except DatasetExists:  # another page loaded it at the same moment
            pass
    return created


def prompts_of(store: Store, dataset: str | int, split: str | None = None,
               unique: bool = True) -> list:
    """The prompts (strings or message lists) of any dataset, SFT or preference, in order;
    with unique=True each prompt once (preference data repeats prompts)."""
    out, seen = [], set()
    for row in iter_rows(store, dataset, split):
        if unique:
            key = json.dumps(row["prompt"], ensure_ascii=False, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
        out.append(row["prompt"])
    return out


# -- command line ----------------------------------------------------------------------
def cmd_import(args) -> int:
    store = store_of(args)
    mode = "overwrite" if args.overwrite else "append" if args.append else "new"
    report = import_file(store, args.file, kind=args.kind, fmt=args.format, dataset=args.dataset,
                         mode=mode, max_chars=args.max_chars, eval_fraction=args.eval_fraction)
    out = report.to_dict()
    out["rejected"] = [{"line": r["line"], "reason": r["reason"]} for r in report.rejected]
    print_json(out)
    return 0 if report.imported else 1


def cmd_export(args) -> int:
    store = store_of(args)
    n = export_jsonl(store, args.name, args.out, split=args.split, extra=args.with_meta)
    print_json({"dataset": args.name, "rows": n, "out": str(args.out)})
    return 0


def cmd_list(args) -> int:
    rows = [{k: d[k] for k in ("id", "name", "kind", "rows", "eval_fraction", "description")}
            for d in list_datasets(store_of(args))]
    if args.json:
        print_json(rows)
    else:
        for d in rows:
            print(f"{d['name']:<30} {d['kind']:<11} {d['rows']:>7} rows")
    return 0


def cmd_samples(args) -> int:
    print_json({"created": ensure_sample_datasets(store_of(args))})
    return 0


def register_cli(subparsers) -> None:
    """`data import|export|list|samples` for `python -m engine`."""
    data = subparsers.add_parser("data", help="datasets: import, export, list").add_subparsers(
        dest="action", required=True)
    p = data.add_parser("import", help="import a JSONL, JSON, CSV or Parquet file")
    p.add_argument("file")
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--format", choices=FORMATS, default="auto")
    p.add_argument("--dataset", help="dataset name (default: the file's name)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    group.add_argument("--append", action="store_true", help="add to an existing dataset")
    p.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                   help="reject rows with a text longer than this")
    p.add_argument("--eval-fraction", type=float, default=None)
    p.set_defaults(func=cmd_import)
    p = data.add_parser("export", help="write a dataset as TRL JSONL")
    p.add_argument("name")
    p.add_argument("--out", required=True)
    p.add_argument("--split", choices=("train", "eval"))
    p.add_argument("--with-meta", action="store_true", help="add each row's split and meta")
    p.set_defaults(func=cmd_export)
    p = data.add_parser("list", help="list datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = data.add_parser("samples", help="load the shipped sample datasets if absent")
    p.set_defaults(func=cmd_samples)
