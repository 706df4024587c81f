"""Importing beyond the basics: gzip files (by path, bytes or upload), wrapped JSON arrays
reported by item, two imports racing for one new name, and the Data page's refusals."""
from __future__ import annotations

import gzip
import io
import json
import threading
from argparse import Namespace
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine import data
from storage import DatasetExists
from tests.conftest import ROOT

FIX = Path(__file__).resolve().parent / "fixtures"


def _content(store, name, kind="preference"):
    fields = ("prompt",) + data.ANSWER_FIELDS[kind]
    return [{k: r[k] for k in fields} for r in store.list_rows(name)]


class Upload(io.BytesIO):
    """What Streamlit's uploader hands the page: a BytesIO with a name and a size."""

    def __init__(self, raw: bytes, name: str):
        super().__init__(raw)
        self.name, self.size = name, len(raw)


# -- gzip ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture, kind", [("hh.jsonl", "preference"), ("alpaca.json", "sft"),
                                           ("pref.csv", "preference")])
def test_gzip_reads_like_the_plain_file_by_path_bytes_and_upload(store, tmp_path, fixture, kind):
    plain = data.import_file(store, FIX / fixture, kind=kind, dataset="plain")
    packed = gzip.compress((FIX / fixture).read_bytes())
    path = tmp_path / f"{fixture}.gz"
    path.write_bytes(packed)
    sources = {"by-path": (path, None), "by-bytes": (packed, f"{fixture}.gz"),
               "by-upload": (Upload(packed, f"{fixture}.gz"), None),
               "magic-only": (packed, fixture)}  # a .gz without its suffix: told by its bytes
    for name, (source, filename) in sources.items():
        rep = data.import_file(store, source, kind=kind, dataset=name, filename=filename)
        assert (rep.file_type, rep.format, rep.imported) == (plain.file_type, plain.format,
                                                             plain.imported), name
        assert rep.rejected == plain.rejected, name
        assert _content(store, name, kind) == _content(store, "plain", kind), name
    assert data.default_name(f"{fixture}.gz") == data.default_name(fixture)


def test_gzip_without_any_name_and_parquet_gz(store, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rep = data.import_file(store, gzip.compress((FIX / "pref_trl.jsonl").read_bytes()),
                           kind="preference", dataset="nameless")
    assert (rep.file_type, rep.imported) == ("jsonl", 3)
    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["Who wrote Candide?"], "chosen": ["Voltaire."],
                             "rejected": ["Rousseau."]}), buf)
    (tmp_path / "p.parquet.gz").write_bytes(gzip.compress(buf.getvalue()))
    rep = data.import_file(store, tmp_path / "p.parquet.gz", kind="preference")
    assert (rep.file_type, rep.imported) == ("parquet", 1)
    assert store.list_rows("p")[0]["chosen"] == "Voltaire."


def test_gzip_progress_stays_a_fraction_of_the_file(store, tmp_path):
    lines = [json.dumps({"prompt": f"Question {i}?", "chosen": f"Yes {i}.", "rejected": f"No {i}."})
             for i in range(3000)]
    path = tmp_path / "big.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    seen = []
    rep = data.import_file(store, path, kind="preference", batch_size=500,
                           progress=lambda frac, n: seen.append((frac, n)))
    assert rep.imported == 3000 and seen[-1] == (1.0, 3000)
    assert all(0 <= f <= 1 for f, _ in seen) and all(a <= b for a, b in zip(seen, seen[1:]))


def test_damaged_gzip_is_a_clear_error_and_stores_nothing(store, tmp_path):
    data.import_file(store, FIX / "pref_trl.jsonl", kind="preference", dataset="keep")
    lines = "\n".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"})
                      for i in range(2000))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(lines.encode())[:-40])  # the end of the stream is missing
    for mode, dataset in (("new", "cut"), ("overwrite", "keep")):
        with pytest.raises(data.DataFormatError, match="not a valid gzip file"):
            data.import_file(store, cut, kind="preference", dataset=dataset, mode=mode,
                             batch_size=100)
    assert [d["name"] for d in store.list_datasets()] == ["keep"]  # no staging left either
    assert store.get_dataset("keep")["rows"] == 3


def test_unknown_type_names_what_is_accepted():
    with pytest.raises(data.DataFormatError, match=r"\.jsonl\.gz") as exc:
        data.file_type_of("notes.txt", b"hello")
    assert "notes.txt" in str(exc.value)
    assert data.file_type_of("notes.txt.gz", gzip.compress(b'{"prompt": "p"}\n')) == "jsonl"


# -- wrapped JSON: items, not lines -------------------------------------------------------------
def test_wrapped_json_rejects_name_the_item(store, tmp_path, lab_home, capsys):
    rows = [{"prompt": "Who wrote Candide?", "chosen": "Voltaire.", "rejected": "Rousseau."},
            {"prompt": "Same?", "chosen": "x", "rejected": "x"},
            {"prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": "Cusco."}]
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": rows}, indent=1))
    rep = data.import_file(store, path, kind="preference")
    assert rep.imported == 2
    assert rep.rejected == [{"item": 2, "reason": "chosen == rejected", "code": "same_answers"}]
    # the command line says "item" too
    from engine.data.commands import cmd_import

    args = Namespace(db=str(lab_home / "cli.db"), file=str(path), kind="preference",
                     format="auto", dataset="w", overwrite=False, append=False,
                     max_chars=data.DEFAULT_MAX_CHARS, eval_fraction=None)
    assert cmd_import(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rejected"] == [{"item": 2, "reason": "chosen == rejected"}]


# -- two imports racing for one new name -------------------------------------------------------
def test_two_imports_racing_for_a_new_name_never_replace_each_other(store, tmp_path,
                                                                        monkeypatch):
    n = 40
    files = []
    for who in ("a", "b"):
        path = tmp_path / f"{who}.jsonl"
        path.write_text("\n".join(json.dumps({"prompt": f"{who} question {i}?",
                                              "chosen": f"{who} good {i}.",
                                              "rejected": f"{who} bad {i}."})
                                  for i in range(n)) + "\n")
        files.append(path)
    # both pass the early name check and stage every row; then both are held right before
    # the landing transaction (update_dataset(temp, meta=...) is its last step before it),
    # the window where a check made outside that transaction let one replace the other
    before_landing = threading.Barrier(2, timeout=60)
    real_update = store.update_dataset

    def update_dataset(name_or_id, **fields):
        real_update(name_or_id, **fields)
        if "meta" in fields:
            before_landing.wait()

    monkeypatch.setattr(store, "update_dataset", update_dataset)
    results: dict[str, object] = {}

    def run(path: Path) -> None:
        try:
            results[path.stem] = data.import_file(store, path, kind="preference",
                                                  dataset="shared", batch_size=5)
        except Exception as exc:  # noqa: BLE001 - the test looks at what was raised
            results[path.stem] = exc

    threads = [threading.Thread(target=run, args=(p,)) for p in files]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    errors = {k: v for k, v in results.items() if isinstance(v, Exception)}
    assert len(results) == 2 and len(errors) == 1, results
    (loser, error), = errors.items()
    assert isinstance(error, DatasetExists) and "'shared'" in str(error), error
    winner = "b" if loser == "a" else "a"
    assert [d["name"] for d in store.list_datasets()] == ["shared"]  # no staging left
    prompts = [r["prompt"] for r in store.list_rows("shared")]
    assert prompts == [f"{winner} question {i}?" for i in range(n)]


def test_replace_dataset_can_refuse_an_existing_name(store):
    store.create_dataset("taken", "sft")
    store.add_rows("taken", [{"prompt": "p", "response": "r"}])
    store.create_dataset("staged", "sft")
    store.add_rows("staged", [{"prompt": "q", "response": "s"}] * 2)
    with pytest.raises(DatasetExists, match="'taken'"):
        store.replace_dataset("taken", "staged", overwrite=False)
    assert store.get_dataset("taken")["rows"] == 1 and store.get_dataset("staged")["rows"] == 2
    store.replace_dataset("fresh", "staged", overwrite=False)
    assert store.get_dataset("fresh")["rows"] == 2


# -- the Data page: a refused upload is an error on the page ----------------------------------
def test_data_page_accepts_gzip_and_shows_refusals(store, tmp_path):
    import streamlit as st

    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "views" / "data.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    at.file_uploader(key="import_file_0").set_value(
        ("notes.txt", b"just some text", "text/plain"))
    at.run()
    assert any("notes.txt" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="import_go").disabled
    at.file_uploader(key="import_file_0").set_value(
        ("hh.jsonl.gz", gzip.compress((FIX / "hh.jsonl").read_bytes()), "application/gzip"))
    at.run()
    assert not at.error and not at.button(key="import_go").disabled
    at.button(key="import_go").click().run()
    assert not at.exception, at.exception
    assert store.get_dataset("hh")["rows"] == 2
    st.cache_resource.clear()
