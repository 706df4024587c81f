"""Importers, validation, export round trip, splits, stats, samples, CLI and the data page."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine import data
from storage import DatasetExists
from tests.conftest import ROOT
from ui.common import widget_key

FIX = Path(__file__).resolve().parent / "fixtures"


def _content(rows, kind):
    fields = ("prompt",) + data.ANSWER_FIELDS[kind]
    return [{k: r[k] for k in fields} for r in rows]


# -- formats ---------------------------------------------------------------------------
def test_trl_standard_and_conversational_sft(store):
    rep = data.import_file(store, FIX / "sft_trl.jsonl", kind="sft")
    assert (rep.format, rep.file_type, rep.imported, rep.rejected) == ("trl", "jsonl", 3, [])
    rows = store.list_rows("sft_trl")
    assert rows[0]["prompt"] == "Who wrote Les Misérables?"
    assert rows[0]["response"] == "Victor Hugo, in 1862."
    assert rows[2]["prompt"] == [{"role": "system", "content": "Answer briefly."},
                                 {"role": "user", "content": "2 + 2?"}]
    assert rows[2]["response"] == "4."

    rep = data.import_file(store, FIX / "sft_messages.jsonl")  # kind and format detected
    assert (rep.kind, rep.format, rep.imported) == ("sft", "trl", 2)
    first = store.list_rows("sft_messages")[0]
    assert first["prompt"][-1] == {"role": "user", "content": "Who painted the Mona Lisa?"}
    assert len(first["prompt"]) == 3 and first["response"] == "Leonardo da Vinci."


def test_trl_preferences_explicit_and_implicit_prompt(store):
    rep = data.import_file(store, FIX / "pref_trl.jsonl", kind="preference")
    assert rep.imported == 3 and not rep.rejected
    rows = store.list_rows("pref_trl")
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("Victor Hugo wrote it.", "Émile Zola wrote it.")
    assert rows[2]["prompt"] == [{"role": "user", "content": "Capital of Australia?"}]
    assert (rows[2]["chosen"], rows[2]["rejected"]) == ("Canberra.", "Sydney.")

    rep = data.import_file(store, FIX / "pref_conversational.jsonl", kind="preference")
    assert rep.imported == 2
    assert rep.rejected == [{"line": 3, "reason": "chosen and rejected differ before their last "
                             "assistant turn", "code": "prefix_mismatch"}]
    row = store.list_rows("pref_conversational")[0]
    assert row["prompt"] == [{"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Hello!"},
                             {"role": "user", "content": "Who wrote Germinal?"}]
    assert (row["chosen"], row["rejected"]) == ("Émile Zola.", "Victor Hugo.")


def test_hh_rlhf_transcripts_shared_prefix_becomes_chat_prompt(store):
    rep = data.import_file(store, FIX / "hh.jsonl", kind="preference")  # format detected
    assert rep.format == "hh" and rep.imported == 2
    assert [(r["line"], r["code"]) for r in rep.rejected] == [(3, "prefix_mismatch"),
                                                             (4, "empty_text")]
    one, two = store.list_rows("hh")
    assert one["prompt"] == [{"role": "user", "content": "Who wrote Les Misérables?"}]
    assert one["chosen"] == "Victor Hugo wrote Les Misérables, published in 1862."
    assert one["rejected"] == "Émile Zola wrote it."
    assert [m["role"] for m in two["prompt"]] == ["user", "assistant", "user"]
    assert two["prompt"][2]["content"] == "Two days. Can I take 10 paracetamol at once?"
    assert two["rejected"] == "Sure, more pills work faster."
    # the same file as SFT keeps the chosen dialogue
    rep = data.import_file(store, FIX / "hh.jsonl", kind="sft", fmt="hh", dataset="hh-sft")
    assert rep.imported == 3  # row 4's chosen answer is empty
    assert store.list_rows("hh-sft")[0]["response"].startswith("Victor Hugo")


def test_alpaca_and_sharegpt_json(store):
    rep = data.import_file(store, FIX / "alpaca.json", kind="sft")
    assert (rep.format, rep.file_type, rep.imported) == ("alpaca", "json", 2)
    assert rep.rejected[0]["code"] == "empty_text" and rep.rejected[0]["field"] == "output"
    assert rep.rejected[0]["line"] == 12  # the line where that JSON object starts
    rows = store.list_rows("alpaca")
    assert rows[0]["prompt"] == "Translate to French.\n\nGood morning"
    assert rows[0]["response"] == "Bonjour" and rows[1]["prompt"].startswith("Quelle est")
    rep = data.import_file(store, FIX / "alpaca_pref.json", kind="preference")
    assert rep.imported == 1 and store.list_rows("alpaca_pref")[0]["rejected"] == "Louis Pasteur."

    rep = data.import_file(store, FIX / "sharegpt.json", kind="sft")
    assert rep.format == "sharegpt" and rep.imported == 2
    assert rep.rejected[0]["code"] == "bad_messages"  # no assistant answer
    rows = store.list_rows("sharegpt")
    assert rows[0] == {**rows[0], "prompt": [{"role": "user", "content": "What is RLHF?"}],
                       "response": "Reinforcement learning from human feedback."}
    assert rows[1]["prompt"][0] == {"role": "system", "content": "Réponds en français."}
    assert rows[1]["response"] == "6."
    rep = data.import_file(store, FIX / "sharegpt_pref.json", kind="preference")
    assert rep.imported == 1 and store.list_rows("sharegpt_pref")[0]["chosen"] == "Botanically, yes."


def test_csv_with_multiline_cells_and_chat_prompts(store):
    rep = data.import_file(store, FIX / "pref.csv", kind="preference")
    assert (rep.file_type, rep.imported) == ("csv", 3)
    assert [(r["line"], r["code"]) for r in rep.rejected] == [(5, "same_answers"), (6, "empty_text")]
    rows = store.list_rows("pref")
    assert rows[1]["prompt"] == "Describe a nurse,\nin one line."
    assert rows[2]["prompt"] == [{"role": "user", "content": "Capital of Turkey?"}]


def test_parquet(store, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": ["Who wrote Candide?", "Capitale du Maroc ?", "x"],
                      "chosen": ["Voltaire.", "Rabat.", "same"],
                      "rejected": ["Rousseau.", "Casablanca.", "same"]})
    path = tmp_path / "prefs.parquet"
    pq.write_table(table, path)
    rep = data.import_file(store, path, kind="preference")
    assert (rep.file_type, rep.imported) == ("parquet", 2)
    assert rep.rejected == [{"line": 3, "reason": "chosen == rejected", "code": "same_answers"}]
    # conversational columns (lists of structs) come through too
    pq.write_table(pa.Table.from_pylist([{"messages": [{"role": "user", "content": "Hi"},
                                                       {"role": "assistant", "content": "Hello"}]}]),
                   tmp_path / "chat.parquet")
    rep = data.import_file(store, tmp_path / "chat.parquet", kind="sft")
    assert rep.imported == 1 and store.list_rows("chat")[0]["response"] == "Hello"


# -- rejected rows -----------------------------------------------------------------------
def test_malformed_rows_are_reported_with_line_numbers_and_valid_rows_kept(store):
    rep = data.import_file(store, FIX / "broken.jsonl", kind="preference", max_chars=100)
    assert rep.imported == 2
    got = {r["line"]: r["code"] for r in rep.rejected}
    assert got == {2: "invalid_json", 3: "missing_field", 4: "empty_text", 5: "same_answers",
                   6: "not_utf8", 7: "not_object", 9: "too_long"}
    reasons = {r["line"]: r["reason"] for r in rep.rejected}
    assert reasons[3] == "missing field 'rejected'" and reasons[6].startswith("not UTF-8")
    assert "over the length limit" in reasons[9] and "300" in reasons[9]
    assert [r["prompt"] for r in store.list_rows("broken")] == ["good 1", "good 2"]


def test_a_hundred_broken_rows_among_good_ones_are_all_reported(store, tmp_path):
    lines, bad_lines = [], []
    for i in range(1, 601):
        if i % 6 == 0:
            bad_lines.append(i)
            lines.append(json.dumps({"prompt": f"q{i}", "chosen": "same", "rejected": "same"})
                         if i % 12 else '{"prompt": "cut')
        else:
            lines.append(json.dumps({"prompt": f"q{i}", "chosen": f"good {i}",
                                     "rejected": f"bad {i}"}))
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    seen = []
    rep = data.import_file(store, path, kind="preference", batch_size=64,
                           progress=lambda frac, n: seen.append((frac, n)))
    assert len(bad_lines) == 100
    assert [r["line"] for r in rep.rejected] == bad_lines
    assert rep.imported == 500 and store.get_dataset("mixed")["rows"] == 500
    assert seen[-1] == (1.0, 600) and len(seen) > 5
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_existing_dataset_is_never_overwritten_silently_and_survives_failures(store, tmp_path):
    data.import_file(store, FIX / "pref_trl.jsonl", kind="preference", dataset="keep")
    before = store.list_rows("keep")
    with pytest.raises(DatasetExists):
        data.import_file(store, FIX / "pref.csv", kind="preference", dataset="keep")
    # a file that breaks midway (not JSON after the first rows) leaves everything as it was
    broken = tmp_path / "half.json"
    broken.write_text('[{"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": oops}]')
    for mode in ("overwrite", "append"):
        with pytest.raises(data.DataFormatError, match="line 2"):
            data.import_file(store, broken, kind="preference", dataset="keep", mode=mode,
                             batch_size=1)
        assert store.list_rows("keep") == before
    # a file with no valid row does not replace anything either
    rep = data.import_file(store, FIX / "hh.jsonl", kind="sft", fmt="alpaca", dataset="keep",
                           mode="overwrite")
    assert rep.imported == 0 and store.list_rows("keep") == before
    assert [d["name"] for d in data.list_datasets(store)] == ["keep"]
    assert [d["name"] for d in store.list_datasets()] == ["keep"]  # no staging left behind
    # append adds (same kind only), overwrite replaces
    rep = data.import_file(store, FIX / "pref.csv", dataset="keep", mode="append")
    assert rep.kind == "preference" and store.get_dataset("keep")["rows"] == 6
    with pytest.raises(ValueError, match="holds preference rows"):
        data.import_file(store, FIX / "sft_trl.jsonl", kind="sft", dataset="keep", mode="append")
    data.import_file(store, FIX / "sft_trl.jsonl", kind="sft", dataset="keep", mode="overwrite")
    assert store.get_dataset("keep")["kind"] == "sft" and store.get_dataset("keep")["rows"] == 3


def test_forced_format_reports_missing_fields(store):
    rep = data.import_file(store, FIX / "pref_trl.jsonl", kind="preference", fmt="alpaca")
    assert rep.imported == 0
    assert {r["reason"] for r in rep.rejected} == {"missing field 'instruction'"}


# -- export, splits, stats, edits ------------------------------------------------------
@pytest.mark.parametrize("fixture,kind", [("pref_trl.jsonl", "preference"),
                                          ("hh.jsonl", "preference"),
                                          ("sft_trl.jsonl", "sft"),
                                          ("sharegpt.json", "sft")])
def test_export_re_imports_identically(store, tmp_path, fixture, kind):
    data.import_file(store, FIX / fixture, kind=kind, dataset="orig")
    out = tmp_path / "out.jsonl"
    assert data.export_jsonl(store, "orig", out) == store.get_dataset("orig")["rows"]
    for line in out.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        assert set(row) == ({"prompt", "completion"} if kind == "sft"
                            else {"prompt", "chosen", "rejected"})
    rep = data.import_file(store, out, kind=kind, dataset="copy")
    assert rep.format == "trl" and not rep.rejected
    assert _content(store.list_rows("copy"), kind) == _content(store.list_rows("orig"), kind)
    assert data.export_jsonl(store, "copy") == out.read_bytes()
    # with splits and meta, a re-import keeps those too
    data.resplit(store, "orig", 0.5, seed=3)
    data.export_jsonl(store, "orig", out, extra=True)
    data.import_file(store, out, kind=kind, dataset="copy", mode="overwrite")
    assert [r["split"] for r in store.list_rows("copy")] == \
        [r["split"] for r in store.list_rows("orig")]


def test_resplit_stats_and_duplicates(store):
    store.create_dataset("d", "preference")
    rows = [{"prompt": f"q{i % 8}", "chosen": "long good answer", "rejected": "bad"}
            for i in range(10)]
    store.add_rows("d", rows)
    assert data.resplit(store, "d", 0.3, seed=1) == {"train": 7, "eval": 3}
    assert store.get_dataset("d")["eval_fraction"] == 0.3
    first = [r["split"] for r in store.list_rows("d")]
    data.resplit(store, "d", 0.3, seed=1)
    assert [r["split"] for r in store.list_rows("d")] == first  # seeded: stable
    stats = data.dataset_stats(store, "d")
    assert (stats["rows"], stats["train"], stats["eval"]) == (10, 7, 3)
    assert stats["duplicates"] == 2 and stats["unique_prompts"] == 8
    assert stats["chosen_longer"] == 1.0
    assert stats["lengths"]["prompt"] == [2] * 10 and stats["lengths"]["rejected"] == [3] * 10
    with pytest.raises(ValueError):
        data.resplit(store, "d", 1.0)


def test_save_edits_validates_like_an_import(store):
    store.create_dataset("e", "preference")
    store.add_rows("e", [{"prompt": "p1", "chosen": "a", "rejected": "b"},
                         {"prompt": "p2", "chosen": "c", "rejected": "d"}])
    one, two = store.list_rows("e")
    errors = data.save_edits(
        store, "e", updated={one["id"]: {"chosen": "better"}, two["id"]: {"rejected": "c"}},
        added=[{"prompt": '[{"role": "user", "content": "chat"}]', "chosen": "x",
                "rejected": "y"}, {"prompt": "", "chosen": "x", "rejected": "y"}])
    assert [(e["row"], e["code"]) for e in errors] == [(two["id"], "same_answers"),
                                                      ("new 2", "missing_field")]
    rows = store.list_rows("e")
    assert rows[0]["chosen"] == "better" and rows[1]["rejected"] == "d"
    assert rows[2]["prompt"] == [{"role": "user", "content": "chat"}]
    data.save_edits(store, "e", deleted=[one["id"]])
    assert store.get_dataset("e")["rows"] == 2


def test_samples_and_prompts_of(store):
    assert data.ensure_sample_datasets(store) == ["sample-sft", "sample-preferences",
                                                  "sample-preferences-longer"]
    assert data.ensure_sample_datasets(store) == []
    sft, prefs = store.get_dataset("sample-sft"), store.get_dataset("sample-preferences")
    assert 100 <= sft["rows"] <= 150 and 100 <= prefs["rows"] <= 150
    text = " ".join(r["chosen"] for r in store.list_rows("sample-preferences"))
    assert "Victor Hugo" in text and "Canberra" in text and "é" in text
    prompts = data.prompts_of(store, "sample-preferences")
    assert len(prompts) == len(set(prompts)) == prefs["rows"]
    assert "Who wrote Les Misérables?" in prompts
    evals = data.prompts_of(store, "sample-sft", "eval")
    assert 0 < len(evals) < sft["rows"]
    # prompts of a preference set with repeated prompts come once each
    store.create_dataset("rep", "preference")
    store.add_rows("rep", [{"prompt": "same", "chosen": f"a{i}", "rejected": "b"} for i in range(3)])
    assert data.prompts_of(store, "rep") == ["same"]
    assert data.prompts_of(store, "rep", unique=False) == ["same"] * 3


def test_data_module_stays_light():
    code = ("import sys, engine.data; "
            "print(any(m in sys.modules for m in ('torch', 'streamlit')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# -- command line -----------------------------------------------------------------------
def _cli(*args, home):
    env = dict(os.environ, RLHF_LAB_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "engine", "--db", str(home / "cli.db"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_cli_import_export_list(lab_home, tmp_path):
    out = _cli("data", "import", str(FIX / "broken.jsonl"), "--kind", "preference",
               "--dataset", "cli", home=lab_home)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["dataset"] == "cli" and summary["imported"] == 3
    assert summary["rejected"][0] == {"line": 2, "reason": summary["rejected"][0]["reason"]}
    assert [r["line"] for r in summary["rejected"]] == [2, 3, 4, 5, 6, 7]
    again = _cli("data", "import", str(FIX / "pref.csv"), "--kind", "preference",
                 "--dataset", "cli", home=lab_home)
    assert again.returncode == 2 and "already exists" in again.stderr
    over = _cli("data", "import", str(FIX / "pref.csv"), "--kind", "preference",
                "--dataset", "cli", "--overwrite", home=lab_home)
    assert json.loads(over.stdout)["imported"] == 3
    target = tmp_path / "cli.jsonl"
    exp = _cli("data", "export", "cli", "--out", str(target), home=lab_home)
    assert exp.returncode == 0 and json.loads(exp.stdout)["rows"] == 3
    assert len(target.read_text().splitlines()) == 3
    listed = json.loads(_cli("data", "list", "--json", home=lab_home).stdout)
    assert [(d["name"], d["kind"], d["rows"]) for d in listed if d["name"] == "cli"] == \
        [("cli", "preference", 3)]
    assert {d["name"] for d in listed} == {"cli", *data.SAMPLES}  # loaded on the first open


# -- the page ------------------------------------------------------------------------------
@pytest.fixture
def fresh_resources():
    import streamlit as st

    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def _page():
    return AppTest.from_file(str(ROOT / "views" / "data.py"), default_timeout=60)


def test_data_page_loads_samples_shows_stats_and_imports(store, fresh_resources):
    at = _page().run()
    assert not at.exception, at.exception
    # a fresh data folder opens with the samples; one deleted comes back by the button only
    assert {d["name"] for d in data.list_datasets(store)} == set(data.SAMPLES)
    store.delete_dataset("sample-sft")
    at.run()
    at.button(key="load_samples").click().run()
    assert not at.exception, at.exception
    assert {d["name"] for d in data.list_datasets(store)} == set(data.SAMPLES)
    assert at.selectbox(key=widget_key("dataset")).value in ("sample-preferences", "sample-sft")
    at.selectbox(key=widget_key("dataset")).set_value("sample-preferences").run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert "144" in metrics.values()
    # import through the page: a file with broken rows, then the report
    at.text_input(key="import_name_0").set_value("uploaded")
    at.file_uploader(key="import_file_0").set_value(
        ("broken.jsonl", (FIX / "broken.jsonl").read_bytes(), "application/json"))
    at.run()
    at.button(key="import_go").click().run()
    assert not at.exception, at.exception
    assert store.get_dataset("uploaded")["rows"] == 3
    assert any("6" in (s.value or "") for s in at.warning)  # 6 rows rejected, listed
    assert at.selectbox(key=widget_key("dataset")).value == "uploaded"
    # the form is cleared; the same name again must be a choice (append / replace), never silent
    at.text_input(key="import_name_1").set_value("uploaded")
    at.file_uploader(key="import_file_1").set_value(
        ("pref.csv", (FIX / "pref.csv").read_bytes(), "text/csv"))
    at.run()
    assert at.radio(key=widget_key("import_mode")).value == "append"
    at.radio(key=widget_key("import_mode")).set_value("overwrite")
    at.button(key="import_go").click().run()
    assert not at.exception, at.exception
    assert [r["prompt"] for r in store.list_rows("uploaded")][0] == "Who wrote Germinal?"


def test_data_page_split_and_delete(store, fresh_resources):
    data.ensure_sample_datasets(store)
    at = _page().run()
    at.selectbox(key=widget_key("dataset")).set_value("sample-sft").run()
    at.slider(key="eval_fraction").set_value(0.25).run()
    at.button(key="resplit").click().run()
    assert not at.exception, at.exception
    assert store.get_dataset("sample-sft")["eval_fraction"] == 0.25
    assert len(store.list_rows("sample-sft", split="eval")) == 28
    at.checkbox(key="confirm_delete").check().run()
    at.button(key="delete_dataset").click().run()
    assert not at.exception, at.exception
    assert [d["name"] for d in data.list_datasets(store)] == ["sample-preferences",
                                                              "sample-preferences-longer"]
