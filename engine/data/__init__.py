"""Datasets in and out: importers, validation, TRL export, statistics, splits, samples.

Files: JSONL, JSON, CSV and Parquet, plain or gzip-compressed, read as a stream (line by
line, or batch by batch for Parquet) and written in batches, so tens of thousands of rows
import without holding the page. Formats (detected from the first recognisable row, or
chosen): TRL standard and conversational, HH-RLHF transcripts, alpaca, ShareGPT.

Every rejected row is reported with its line number (or its item number in a wrapped JSON
array) and the reason. A staged import lands whole or not at all, and never replaces an
existing dataset unless asked to (append, a new name, or overwrite).

The package, by responsibility:
- ``records``: kinds and fields of internal records, row errors, chat messages, validation;
- ``formats``: format detection and mapping (TRL, HH-RLHF, alpaca, ShareGPT);
- ``readers``: JSONL / JSON / CSV / Parquet files (and their gzip) read as streams;
- ``importer``: the import itself (staging, landing, the report);
- ``curation``: export, edits, re-splits, statistics, the shipped samples, prompts;
- ``sources``: where each pair came from (human vote, imported, sample, AI...), a filter by
  source, and the share of AI-labelled pairs in training (``mix_sources``);
- ``commands``: ``python -m engine data ...``.

No Streamlit and no torch here.
"""
from engine.data.curation import (ASSETS, SAMPLES, SAMPLES_MARKER, cell_prompt, dataset_stats,
                                  ensure_sample_datasets, ensure_samples_on_first_open,
                                  export_jsonl, export_lines, iter_rows, prompt_cell,
                                  prompts_of, resplit, save_edits, to_trl)
from engine.data.formats import (FORMATS, HH_TURN, NORMALISERS, detect_format, detect_kind,
                                 normalise, parse_hh)
from engine.data.importer import (MODES, TEMP_PREFIX, ImportReport, Progress, cleanup_staged,
                                  default_name, import_file, list_datasets, read_records)
from engine.data.readers import (FILE_TYPES, ItemNo, file_type_of, iter_file, plain_name,
                                 sniff_file_type)
from engine.data.records import (ANSWER_FIELDS, BATCH_SIZE, DEFAULT_MAX_CHARS, FIELD_NAMES,
                                 KINDS, ROLE_ALIASES, DataFormatError, RowError, empty,
                                 messages_of, missing, prompt_chars, prompt_text,
                                 shared_prompt, split_last_answer, validate)
from engine.data.sources import (CLASSES as SOURCE_CLASSES, mix_sources, pair_sources,
                                 rows_by_source, source_class)

__all__ = [
    "ANSWER_FIELDS", "ASSETS", "BATCH_SIZE", "DEFAULT_MAX_CHARS", "DataFormatError",
    "FIELD_NAMES", "FILE_TYPES", "FORMATS", "HH_TURN", "ImportReport", "ItemNo", "KINDS",
    "MODES", "NORMALISERS", "Progress", "ROLE_ALIASES", "RowError", "SAMPLES", "SAMPLES_MARKER",
    "SOURCE_CLASSES", "TEMP_PREFIX", "cell_prompt", "cleanup_staged", "dataset_stats",
    "default_name", "detect_format", "detect_kind", "empty", "ensure_sample_datasets",
    "ensure_samples_on_first_open", "export_jsonl", "export_lines", "file_type_of",
    "import_file", "iter_file", "iter_rows", "list_datasets", "messages_of", "missing",
    "mix_sources", "normalise", "pair_sources", "parse_hh", "plain_name", "prompt_cell",
    "prompt_chars", "prompt_text", "prompts_of", "read_records", "resplit",
    "rows_by_source", "save_edits", "shared_prompt", "sniff_file_type", "source_class",
    "split_last_answer", "to_trl", "validate",
]
