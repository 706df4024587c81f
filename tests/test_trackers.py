"""report_to: a training run's settings and metrics in TensorBoard and MLflow, read back with
their own readers (TensorBoard's EventAccumulator, MLflow's client) and compared with the
lab's database; a tracker that cannot be reached fails the start, or warns and goes on."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest

from engine import schema
from engine.runtime import stages
from engine.runtime.jobs import run_sync
from tests.conftest import free_port


@pytest.fixture(autouse=True)
def _mlflow_fails_fast(monkeypatch):
    # an unreachable server is refused at once (the engine's default retries twice)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _mlflow_client(lab_home):
    import os

    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=(lab_home / "mlruns").as_uri())


def test_sft_reports_every_metric_to_tensorboard_and_mlflow(store, tiny_model_dir, lab_home):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store.create_dataset("tiny-sft", "sft", eval_fraction=0.25)
    store.add_rows("tiny-sft", [{"prompt": f"Say the number {i}.",
                                 "response": f"The number is {i}."} for i in range(8)])
    run = run_sync(store, "sft", {
        "model": str(tiny_model_dir), "dataset": "tiny-sft", "max_steps": 3, "batch_size": 2,
        "learning_rate": 1e-2, "eval_every": 0, "eval_samples": 0, "save_every": 0,
        "max_length": 48, "report_to": "tensorboard,mlflow", "tracker_artifacts": True})
    assert run["status"] == "succeeded", run["error"]
    db = {m["step"]: m["value"] for m in store.get_metrics(run["id"], ["train_loss"])}
    assert sorted(db) == [1, 2, 3]

    # TensorBoard's own reader: the train loss at every logged step, the settings as text
    events = EventAccumulator(str(lab_home / "runs" / str(run["id"]) / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("train_loss")
    assert [s.step for s in scalars] == [1, 2, 3]
    for s in scalars:  # event files hold float32
        assert math.isclose(s.value, db[s.step], rel_tol=1e-6), (s.step, s.value, db[s.step])
    assert any(tag.startswith("settings") for tag in events.Tags()["tensors"])

    # MLflow's client: the run in the stage's experiment, every setting, the same metrics
    client = _mlflow_client(lab_home)
    experiment = client.get_experiment_by_name("sft")
    found = client.search_runs([experiment.experiment_id],
                               filter_string=f"tags.`rlhf_lab.run_id` = '{run['id']}'")
    assert len(found) == 1
    mlrun = found[0]
    assert mlrun.info.status == "FINISHED"
    params = mlrun.data.params
    assert params["dataset"] == "tiny-sft" and params["report_to"] == "tensorboard,mlflow"
    assert float(params["learning_rate"]) == 0.01 and params["lora.r"] == "16"
    assert set(schema.names(stages.get("sft").config_cls)) <= set(params)
    history = client.get_metric_history(mlrun.info.run_id, "train_loss")
    assert {m.step: m.value for m in history} == db
    for name in store.metric_names(run["id"]):  # every metric, not only the loss
        assert client.get_metric_history(mlrun.info.run_id, name), name
    summary = client.download_artifacts(mlrun.info.run_id, "summary.json",
                                        str(lab_home / "dl"))
    assert json.loads(open(summary).read())["final_train_loss"] == run["summary"]["final_train_loss"]
    files = {f.path for f in client.list_artifacts(mlrun.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in files


@dataclass
class TickConfig(schema.TrainConfig):
    steps: int = schema.setting(3, min=1)


def tick(cfg: TickConfig, ctx) -> dict:
    for step in range(1, cfg.steps + 1):
        ctx.metrics(step, {"loss": 1.0 / step})
    return {"steps": cfg.steps}


stages.register("tracker_tick", TickConfig, tick)


def test_an_unreachable_tracker_fails_the_start_or_warns(store):
    uri = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    failed = run_sync(store, "tracker_tick", {"report_to": "mlflow", "tracking_uri": uri})
    assert failed["status"] == "failed"
    assert "mlflow" in failed["error"] and "tracker_errors=warn" in failed["error"]
    assert store.get_metrics(failed["id"]) == []  # it never started

    warned = run_sync(store, "tracker_tick", {"report_to": "mlflow", "tracking_uri": uri,
                                              "tracker_errors": "warn"})
    assert warned["status"] == "succeeded", warned["error"]
    assert [m["value"] for m in store.get_metrics(warned["id"], ["loss"])] == [1.0, 0.5, 1 / 3]
    assert any(line["level"] == "warning" and "mlflow" in line["message"]
               for line in store.get_log(warned["id"]))


def test_mlflow_tracking_uri_from_the_environment_is_honoured(store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    elsewhere = (tmp_path / "elsewhere").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    run = run_sync(store, "tracker_tick", {"report_to": "mlflow",
                                           "tracker_experiment": "ticks"})
    assert run["status"] == "succeeded", run["error"]
    client = MlflowClient(tracking_uri=elsewhere)
    [mlrun] = client.search_runs([client.get_experiment_by_name("ticks").experiment_id])
    assert [m.value for m in client.get_metric_history(mlrun.info.run_id, "loss")] == \
        [1.0, 0.5, 1 / 3]
