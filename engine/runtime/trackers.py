"""Experiment trackers: a training run's settings and metrics in TensorBoard and MLflow too.

`report_to` (a setting of every training stage, named as TRL and transformers name it):
`none`, `tensorboard`, `mlflow` or `tensorboard,mlflow`. The lab's own database stays the
record: every metric is written there first, then handed to the trackers (JobContext.metrics),
and a tracker that fails mid-run is dropped with a warning in the run's log.

- TensorBoard (torch.utils.tensorboard, from the `tensorboard` package): event files in
  `<run_dir>/tensorboard/`, one scalar per metric under the lab's metric name, the settings
  and the final summary as text. `tensorboard --logdir $RLHF_LAB_HOME/runs` shows every run.
- MLflow (the `mlflow-skinny` client): experiment = `tracker_experiment`, else the stage;
  every setting as a param (nested ones dotted: `lora.r`), every metric at its step, the final
  summary as `summary.json` and, with `tracker_artifacts`, the adapter under `adapter/`.
  Tracking URI: the `tracking_uri` setting, else `MLFLOW_TRACKING_URI`, else a local file
  store `<data folder>/mlruns` (MLflow 3 refuses a file store unless
  MLFLOW_ALLOW_FILE_STORE=true, which is set for it here; its SQLite store would need the
  full `mlflow` package). A resumed run continues the same MLflow run (its id is kept in
  `<run_dir>/trackers.json`).

A tracker that cannot be opened when the run starts fails the run with a TrackerError naming
it (`tracker_errors=fail`, the default), or is left out with a warning (`warn`). The client
libraries are imported only when a run asks for them.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from engine.errors import TrackerError

TRACKERS = ("tensorboard", "mlflow")
# MLflow's HTTP client retries for minutes by default: an unreachable server must fail fast
MLFLOW_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
# MLflow run statuses of the lab's end states
MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED",
                 "interrupted": "KILLED"}


def requested(config: Any) -> list[str]:
    value = getattr(config, "report_to", "none") or "none"
    return [n for n in (x.strip() for x in value.split(",")) if n and n != "none"]


def flat_settings(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"lora": {"r": 16}} -> {"lora.r": 16}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_settings(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def mlflow_uri(config: Any) -> str:
    """The tracking URI a run of `config` logs to (see the module docstring)."""
    from storage.db import data_home

    uri = getattr(config, "tracking_uri", "") or os.environ.get("MLFLOW_TRACKING_URI") or ""
    return uri or (data_home() / "mlruns").as_uri()


def _client(module: str, package: str, name: str):
    """A tracker's client library, imported now (a run that asks for it), or a TrackerError
    saying which package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TrackerError(f"report_to: {name} needs the `{package}` "
                           f"package (pip install {package}): {exc}") from exc


class TensorBoard:
    name = "tensorboard"

    def __init__(self, ctx, run: dict, settings: dict[str, Any]):
        SummaryWriter = _client("torch.utils.tensorboard", "tensorboard", self.name).SummaryWriter
        self.folder = Path(ctx.run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.folder), flush_secs=10)
        if not ctx.resume:
            rows = "\n".join(f"| {k} | {json.dumps(v, default=str)} |" for k, v in settings.items())
            self.writer.add_text("settings", f"| setting | value |\n|---|---|\n{rows}", 0)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, status: str, summary: dict) -> None:
        text = json.dumps({"status": status, **summary}, indent=1, default=str)
        self.writer.add_text("summary", f"```\n{text}\n```")
        self.writer.close()


class MLflow:
    name = "mlflow"

    def __init__(self, ctx, run: dict, settings: dict[str, Any]):
        MlflowClient = _client("mlflow", "mlflow-skinny", self.name).MlflowClient
        config = ctx.config
        self.uri = mlflow_uri(config)
        if self.uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        for key, value in MLFLOW_HTTP.items():
            os.environ.setdefault(key, value)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.artifacts = bool(getattr(config, "tracker_artifacts", False))
        self.state = Path(ctx.run_dir) / "trackers.json"
        kept = _read_json(self.state).get("mlflow") or {}
        if ctx.resume and kept.get("uri") == self.uri and kept.get("run_id"):
            self.run_id = kept["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = getattr(config, "tracker_experiment", "") or run["stage"]
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(
            experiment_id, run_name=run.get("name") or f"{run['stage']} #{run['id']}",
            tags={"rlhf_lab.run_id": str(run["id"]), "rlhf_lab.stage": run["stage"],
                  "rlhf_lab.database": str(ctx.store.path)}).info.run_id
        from mlflow.entities import Param

        params = [Param(k, json.dumps(v, default=str) if not isinstance(v, str) else v)
                  for k, v in settings.items()]
        for start in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        _write_json(self.state, {**_read_json(self.state),
                                 "mlflow": {"uri": self.uri, "run_id": self.run_id}})

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, int(step))
                                                    for k, v in values.items()])

    def finish(self, status: str, summary: dict) -> None:
        self.client.log_dict(self.run_id, {"status": status, **summary}, "summary.json")
        adapter = summary.get("adapter")
        if self.artifacts and adapter and Path(adapter).is_dir():
            self.client.log_artifacts(self.run_id, str(adapter), "adapter")
        self.client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(status, "FINISHED"))


OPENERS = {"tensorboard": TensorBoard, "mlflow": MLflow}


class Trackers:
    """The trackers a run opened; a failing one is dropped with a warning, never the run."""

    def __init__(self, ctx, opened: list):
        self.ctx = ctx
        self.opened = opened

    def _each(self, what: str, *args) -> None:
        for tracker in list(self.opened):
            try:
                getattr(tracker, what)(*args)
            except Exception as exc:  # noqa: BLE001 - the run's own records are safe already
                self.opened.remove(tracker)
                self.ctx.log(f"report_to: {tracker.name} failed ({type(exc).__name__}: {exc}); "
                             f"the run goes on without it", "warning")

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if values:
            self._each("metrics", step, values)

    def finish(self, status: str, summary: dict) -> None:
        self._each("finish", status, summary)


def open_for(ctx) -> Trackers | None:
    """The trackers of `ctx`'s run (main process only), or None when it reports to none."""
    from engine.runtime.jobs import config_dict

    names = requested(ctx.config)
    if not names or not ctx.is_main_process:
        return None
    run = ctx.store.get_run(ctx.run_id)
    settings = flat_settings(config_dict(ctx.config))
    opened = []
    for name in names:
        try:
            opened.append(OPENERS[name](ctx, run, settings))
        except Exception as exc:  # noqa: BLE001 - unreachable server, missing package, ...
            reason = str(exc) if isinstance(exc, TrackerError) else \
                f"report_to: {name} cannot be used ({type(exc).__name__}: {exc})"
            if getattr(ctx.config, "tracker_errors", "fail") == "warn":
                ctx.log(f"{reason}; the run goes on without it (tracker_errors=warn)",
                        "warning")
                continue
            raise TrackerError(f"{reason}. Fix it, or set tracker_errors=warn to train "
                               f"without it") from exc
    return Trackers(ctx, opened) if opened else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1))
