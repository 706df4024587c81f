import os
import subprocess
import sys
import threading

import pytest

from storage import DatasetExists, NotFound, Store


def test_schema_is_versioned_and_created_on_first_use(lab_home):
    store = Store(lab_home / "fresh.db")
    assert store.schema_version() == 5
    assert {"datasets", "sft_examples", "pref_pairs", "runs", "metrics", "samples", "artifacts",
            "votes", "logs", "run_groups", "constitutions",
            "capability_answers"} <= set(store.db.table_names())
    assert {"group_id", "group_key"} <= set(store.db["runs"].columns_dict)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # a second open keeps the data and does not re-create
    store.create_dataset("kept", "sft")
    assert Store(lab_home / "fresh.db").get_dataset("kept")["kind"] == "sft"


def test_dataset_round_trip_with_chat_prompts(store):
    store.create_dataset("prefs", "preference", eval_fraction=0.5)
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Who wrote Les Misérables?"}]
    n = store.add_rows("prefs", [
        {"prompt": "plain", "chosen": "good", "rejected": "bad"},
        {"prompt": conv, "chosen": "Victor Hugo.", "rejected": "Émile Zola.",
         "meta": {"source_model": "x"}},
    ])
    assert n == 2
    rows = store.list_rows("prefs")
    assert rows[0]["prompt"] == "plain" and rows[0]["chosen"] == "good"
    assert rows[1]["prompt"] == conv and rows[1]["meta"] == {"source_model": "x"}
    assert {r["split"] for r in rows} == {"train", "eval"}
    store.update_row("prefs", rows[0]["id"], {"chosen": "better"})
    assert store.list_rows("prefs")[0]["chosen"] == "better"
    assert store.delete_rows("prefs", [rows[0]["id"]]) == 1
    assert store.get_dataset("prefs")["rows"] == 1


def test_existing_dataset_is_never_silently_overwritten(store):
    store.create_dataset("d", "sft")
    store.add_rows("d", [{"prompt": "p", "response": "r"}])
    with pytest.raises(DatasetExists):
        store.create_dataset("d", "sft")
    assert store.get_dataset("d")["rows"] == 1
    store.create_dataset("d", "sft", overwrite=True)
    assert store.get_dataset("d")["rows"] == 0
    with pytest.raises(NotFound, match="does not exist"):
        store.get_dataset("missing")


def test_runs_metrics_samples_artifacts_round_trip(store):
    rid = store.create_run("sft", {"lr": 1e-4}, parents=[], model="embedded", dataset="d")
    run = store.get_run(rid)
    assert run["status"] == "queued" and run["config"] == {"lr": 1e-4} and run["name"] == f"sft-{rid}"
    store.log_metrics(rid, 1, {"loss": 2.0, "lr": 1e-4})
    store.log_metrics(rid, 2, {"loss": 1.5})
    assert [m["value"] for m in store.get_metrics(rid, ["loss"])] == [2.0, 1.5]
    assert store.last_metrics(rid) == {"loss": 1.5, "lr": 1e-4}
    store.add_samples(rid, 2, [{"prompt": "p", "response": "r", "reward": 0.5, "kl": 0.1,
                                "length": 3}])
    sample = store.get_samples(rid)[0]
    assert sample["reward"] == 0.5 and sample["extra"] == {"length": 3}
    store.add_artifact(rid, "adapter", "/x", "abc")
    assert store.list_artifacts(rid)[0]["sha256"] == "abc"
    store.delete_run(rid)
    with pytest.raises(NotFound):
        store.get_run(rid)
    assert store.get_metrics(rid) == []


def test_concurrent_writers_from_threads_never_lock(store):
    rid = store.create_run("sft", {})
    errors = []

    def writer(k):
        try:
            for step in range(100):
                store.log_metrics(rid, step, {f"m{k}": step})
                if step % 10 == 0:
                    store.log(rid, f"thread {k} step {step}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(store.get_metrics(rid)) == 600


def test_concurrent_writer_processes(store):
    rid = store.create_run("sft", {})
    code = ("import sys; from storage import Store; s = Store(sys.argv[1]); "
            "[s.log_metrics(int(sys.argv[2]), i, {'p' + sys.argv[3]: i}) for i in range(100)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(store.path), str(rid), str(k)],
                              cwd=os.path.dirname(os.path.dirname(__file__)))
             for k in range(3)]
    for i in range(100):
        store.log_metrics(rid, i, {"main": i})
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    assert len(store.get_metrics(rid)) == 400


def test_orphaned_running_runs_become_interrupted(store):
    rid = store.create_run("sft", {})
    # a run left 'running' by a process that no longer exists
    store.update_run(rid, status="running", pid=2**22 + 12345, host=os.uname().nodename)
    alive = store.create_run("sft", {})
    store.update_run(alive, status="running", pid=os.getppid(), host=os.uname().nodename)
    assert store.mark_interrupted_orphans() == [rid]
    assert store.get_run(rid)["status"] == "interrupted"
    assert store.get_run(alive)["status"] == "running"


def test_a_version_2_database_is_upgraded_in_place_and_keeps_its_runs(lab_home):
    import sqlite_utils

    path = lab_home / "old.db"
    store = Store(path)
    run_id = store.create_run("sft", {"max_steps": 3})
    store.close()
    db = sqlite_utils.Database(path)  # as version 2 left it: no groups, no constitutions
    db["run_groups"].drop()
    db["constitutions"].drop()
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.conn.commit()
    db.close()
    again = Store(path)
    assert again.schema_version() == 5
    assert again.get_run(run_id)["config"] == {"max_steps": 3}
    assert {"run_groups", "constitutions"} <= set(again.db.table_names())
