"""The shipped samples on a fresh data folder: loaded the first time the app or the command
line opens a database, never given back once deleted, and not pushed into a database that
already holds someone's datasets or runs."""
from __future__ import annotations

import threading
from argparse import Namespace

import pytest

from engine import data
from engine.cli import store_of
from storage import Store


def _names(store) -> set[str]:
    return {d["name"] for d in data.list_datasets(store)}


def test_meta_get_set(store):
    assert store.get_meta("k") is None and store.get_meta("k", "x") == "x"
    assert store.set_meta("k", "1") is True and store.get_meta("k") == "1"
    assert store.set_meta("k", "2", only_if_absent=True) is False and store.get_meta("k") == "1"
    assert store.set_meta("k", "3") is True and store.get_meta("k") == "3"
    with pytest.raises(ValueError, match="schema_version"):
        store.set_meta("schema_version", "99")
    assert Store(store.path).get_meta("k") == "3"  # stored, not cached


def test_cli_first_open_loads_samples_once(lab_home):
    args = Namespace(db=str(lab_home / "cli.db"))
    store = store_of(args)
    assert _names(store) == set(data.SAMPLES)
    assert store.get_meta(data.SAMPLES_MARKER) == "loaded"
    rows = {d["name"]: d["rows"] for d in data.list_datasets(store)}
    assert rows == {"sample-sft": 112, "sample-preferences": 144}
    # the user deletes one: opening again does not give it back
    store.delete_dataset("sample-sft")
    again = store_of(args)
    assert _names(again) == {"sample-preferences"}
    assert data.ensure_samples_on_first_open(again) == []
    # the explicit request still does
    assert data.ensure_sample_datasets(again) == ["sample-sft"]


def test_app_store_handle_loads_samples_on_first_open(lab_home):
    import streamlit as st
    from ui.common import _store

    st.cache_resource.clear()
    path = str(lab_home / "app.db")
    try:
        store = _store(path)
        assert _names(store) == set(data.SAMPLES)
        store.delete_dataset("sample-preferences")
        st.cache_resource.clear()  # as after a restart of the app
        assert _names(_store(path)) == {"sample-sft"}
    finally:
        st.cache_resource.clear()


def test_a_bare_store_stays_empty(lab_home):
    assert Store(lab_home / "bare.db").list_datasets() == []


@pytest.mark.parametrize("content", ["dataset", "run"])
def test_database_with_data_from_before_the_marker_gets_only_the_marker(lab_home, content):
    old = Store(lab_home / "old.db")  # what an earlier version left: data, no marker
    if content == "dataset":
        old.create_dataset("mine", "sft")
    else:
        old.create_run("sft", {"model": "embedded"}, status="succeeded")
    store = store_of(Namespace(db=str(old.path)))
    assert _names(store) == ({"mine"} if content == "dataset" else set())
    assert store.get_meta(data.SAMPLES_MARKER) == "not loaded: existing data"
    if content == "dataset":
        store.delete_dataset("mine")
    assert data.ensure_samples_on_first_open(store) == []  # decided once, for good


def test_two_first_opens_at_once_load_the_samples_once(lab_home):
    path = lab_home / "race.db"
    Store(path)
    results, start = [], threading.Barrier(2, timeout=60)

    def open_it():
        store = Store(path)
        start.wait()
        results.append(data.ensure_samples_on_first_open(store))

    threads = [threading.Thread(target=open_it) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert sorted(map(len, results)) == [0, 2]
    store = Store(path)
    assert {d["name"]: d["rows"] for d in data.list_datasets(store)} == {
        "sample-sft": 112, "sample-preferences": 144}
    assert [d["name"] for d in store.list_datasets()] == sorted(data.SAMPLES)  # no staging
