"""Reading files as streams: JSONL line by line, JSON element by element, CSV row by row,
Parquet batch by batch. Each yields (line number, raw record or RowError, fraction read).

Any of them may be gzip-compressed (``.jsonl.gz``, as HH-RLHF is distributed): gzip is
told by its magic bytes, whatever the name, and read as a stream too."""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from engine.data.records import BATCH_SIZE, DataFormatError, RowError

FILE_TYPES = ("jsonl", "json", "csv", "parquet")
GZIP_MAGIC = b"\x1f\x8b"
GZIP_SUFFIXES = (".gz", ".gzip")
HEAD_BYTES = 512  # what file_type_of is given to look at


class ItemNo(int):
    """The number of an element of a JSON array wrapped in an object (``{"data": [...]}``):
    reported as "item N" rather than "line N", since it is not a line number."""


def plain_name(name: str | None) -> str:
    """A file name without its gzip suffix ("hh.jsonl.gz" -> "hh.jsonl")."""
    path = Path(name or "")
    return path.stem if path.suffix.lower() in GZIP_SUFFIXES else path.name


def _gunzip_head(head: bytes) -> bytes:
    """The first bytes of what a gzip stream holds, from its first compressed bytes."""
    try:
        return zlib.decompressobj(wbits=31).decompress(head, HEAD_BYTES)
    except zlib.error:
        return b""


def file_type_of(name: str | None, head: bytes = b"") -> str:
    """jsonl, json, csv or parquet, from the file name (a .gz suffix aside), else from its
    first bytes (decompressed first when they are gzip's)."""
    if head.startswith(GZIP_MAGIC):
        head = _gunzip_head(head)
    suffix = Path(plain_name(name)).suffix.lower()
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
    raise DataFormatError(f"cannot tell the type of {name or 'the file'!r}: use .jsonl, "
                          f".json, .csv or .parquet (or .jsonl.gz, .json.gz, .csv.gz)")


def head_of(source: Any, n: int = HEAD_BYTES) -> bytes:
    """The first `n` bytes of a path, bytes or file object (its position is kept)."""
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as fh:
                return fh.read(n)
        except OSError:
            return b""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:n])
    pos = source.tell()
    head = source.read(n)
    source.seek(pos)
    return head


def sniff_file_type(source: Any, filename: str | None = None) -> str:
    """The type a path, bytes or file object will be read as (DataFormatError if none)."""
    name = filename or (str(source) if isinstance(source, (str, os.PathLike))
                        else getattr(source, "name", None))
    return file_type_of(name, head_of(source))


class _Gunzip(gzip.GzipFile):
    """A gzip stream read as the file it holds. tell() is the position in the compressed
    bytes, so progress (tell / size of the file as given) stays a fraction of that file;
    close() closes the compressed file too when this module opened it."""

    def __init__(self, raw: BinaryIO, owns: bool):
        super().__init__(fileobj=raw, mode="rb")
        self._raw, self._owns = raw, owns

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._owns:
                self._raw.close()


def _open(source: Any, filename: str | None) -> tuple[BinaryIO, str | None, int, bool]:
    """_open_raw, with a gzip file decompressed (its size stays the compressed one)."""
    fh, name, size, opened = _open_raw(source, filename)
    pos = fh.tell()
    magic = fh.read(2)
    fh.seek(pos)
    if magic == GZIP_MAGIC:
        return _Gunzip(fh, owns=opened), name, size, True
    return fh, name, size, opened


def _open_raw(source: Any, filename: str | None) -> tuple[BinaryIO, str | None, int, bool]:
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
            data = text.encode("utf-8", "surrogateescape")
            yield from _iter_jsonl(io.BytesIO(data), len(data))
            return
        for key in ("data", "rows", "train", "examples", "records"):
            if isinstance(obj.get(key), list):
                items = obj[key]
                for i, item in enumerate(items):
                    yield ItemNo(i + 1), item, (i + 1) / len(items)
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

    if isinstance(fh, gzip.GzipFile):  # Parquet reads at random: decompress it whole
        fh = io.BytesIO(fh.read())
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
    """(line number, raw record or RowError, fraction read) for every record of a file;
    an element of a wrapped JSON array is numbered by an ItemNo instead of a line."""
    fh, name, size, opened = _open(source, filename)
    try:
        head = fh.read(HEAD_BYTES)
        fh.seek(0)
        kind = file_type or file_type_of(name, head)
        if kind not in FILE_TYPES:
            raise DataFormatError(f"file type {kind!r} is not one of {FILE_TYPES}")
        if kind == "jsonl":
            yield from _iter_jsonl(fh, size)
        elif kind == "json":
            yield from _iter_json(fh, size)
        elif kind == "csv":
            delimiter = "\t" if Path(plain_name(name)).suffix.lower() == ".tsv" else ","
            yield from _iter_csv(fh, size, delimiter)
        else:
            yield from _iter_parquet(fh, size)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        if not isinstance(fh, _Gunzip):
            raise
        raise DataFormatError(f"{name or 'the file'!r} is not a valid gzip file: {exc}") from exc
    finally:
        if opened:
            fh.close()
