"""Storage on the standard library's sqlite3 (issue 25, item 17: sqlite-utils imports
pandas, numpy and pyarrow, which the first page load must not pay): the behaviours the
sqlite-utils calls had and the pages rely on."""
import subprocess
import sys

import pytest

from storage import NotFound
from tests.conftest import ROOT


def test_rows_paged_with_an_offset_and_no_limit(store):
    store.create_dataset("d", "sft")
    store.add_rows("d", [{"prompt": f"p{i}", "response": "r"} for i in range(5)])
    assert [r["prompt"] for r in store.list_rows("d", offset=3)] == ["p3", "p4"]
    assert [r["prompt"] for r in store.list_rows("d", limit=2, offset=1)] == ["p1", "p2"]


def test_an_update_of_a_missing_row_names_it_and_a_list_is_stored_as_json(store):
    with pytest.raises(NotFound, match="run 999 does not exist"):
        store.update_run(999, message="x")
    run = store.create_run("sft", {"a": 1})
    assert store.get_run(run)["name"] == f"sft-{run}"
    store.update_run(run, message=["a", "b"])  # (sqlite-utils wrote lists as JSON too)
    assert store.get_run(run)["message"] == '["a", "b"]'


def test_the_store_does_not_load_sqlite_utils_until_asked(store):
    code = ("import sys; from storage import Store; s = Store(sys.argv[1]); "
            "s.create_run('sft', {}); s.list_runs(); "
            "print(sorted(m for m in ('sqlite_utils', 'pandas', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(store.path)], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]
    assert "constitutions" in store.db.table_names()  # the sqlite-utils view still works
