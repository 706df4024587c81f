"""The job manager: queue, background threads, progress, cancel, crash and restart.

Every job is a run in storage. A stage is a function `fn(config, ctx) -> summary dict`
registered under a name (see engine.runtime.stages). Training stages queue and run one at a
time on a single worker thread (one device); light stages (sampling two answers for a
vote, a comparison, an export) queue on a worker of their own per model, so they never
wait behind a long training run and never compete with each other for the same model
and the same cores. Workers write to storage only; pages poll storage.

Cancel: a run of this process's queue is cancelled through its threading.Event; a run
started by the headless CLI (another process) is sent SIGTERM, which `run_sync` turns
into the same cancel (see JobManager.cancel).

A training run whose `processes` setting is 2 or more is run by the worker (or the CLI)
through `accelerate launch` (engine.runtime.launch.run_launched); its processes record it
through `run_distributed`. Trackers (report_to: engine.runtime.trackers) are opened by
`execute` and receive every metric after the database does.
"""
from __future__ import annotations

import hashlib
import math
import os
import queue
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable

from engine.runtime import stages
# re-exported: `from engine.runtime.jobs import JobCancelled` keeps working
from engine.errors import (CheckpointError, JobCancelled, MemoryEstimateError,  # noqa: F401
                           NonFiniteError, TrackerError)
from engine.inference.specs import run_dir as _run_dir
from storage import Store
from storage.db import ACTIVE_STATES, RESUMABLE_STATES, owner_process


class JobContext:
    """What a running stage sees: storage, its folder, progress, cancel."""

    def __init__(self, store: Store, run_id: int, config: Any, resume: bool = False,
                 cancel_event: threading.Event | None = None, may_write: bool = True,
                 agree: Callable[[bool], bool] | None = None):
        self.store = store
        self.run_id = run_id
        self.config = config
        self.resume = resume
        self.cancel_event = cancel_event or threading.Event()
        # Under `accelerate launch` the other processes get may_write=False: they never
        # write, whatever the stage sets is_main_process to.
        self.may_write = may_write
        # under `accelerate launch`: whether ANY process was asked to cancel (a collective
        # every process calls at the same point), so that all of them stop together
        self.agree = agree
        self.trackers = None  # engine.runtime.trackers.Trackers of the main process
        self._main = True  # stages on accelerate set is_main_process; only main writes
        self._run_dir: Path | None = None
        self._paced = False  # whether this attempt's first step report was recorded
        self._last_step: int | None = None

    @property
    def is_main_process(self) -> bool:
        return self._main and self.may_write

    @is_main_process.setter
    def is_main_process(self, value: bool) -> None:
        self._main = bool(value)

    @property
    def run_dir(self) -> Path:
        if self._run_dir is None:
            self._run_dir = _run_dir(self.run_id)
        return self._run_dir

    # -- cancel ------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancel(self) -> None:
        asked = self.cancel_event.is_set()
        if self.agree is not None:
            asked = self.agree(asked)
        if asked:
            self.cancel_event.set()
            raise JobCancelled(f"run {self.run_id} cancelled")

    # -- writing -----------------------------------------------------------------
    def log(self, message: str, level: str = "info") -> None:
        if self.is_main_process:
            self.store.log(self.run_id, message, level)

    def progress(self, step: int, total: int | None = None, message: str | None = None) -> None:
        if not self.is_main_process:
            return
        fields: dict[str, Any] = {"step": int(step)}
        if step != self._last_step:  # the ETA counts down from the latest step's report
            self._last_step = int(step)
            fields["step_time"] = time.time()
        if step > 0 and not self._paced:
            # the ETA's pace counts from this attempt's first step report: loading the model,
            # evaluating before training or the steps of an earlier attempt are not steps
            self._paced = True
            fields.update(attempt_step=int(step), attempt_time=time.time())
        if total:
            fields["total_steps"] = int(total)
            fields["progress"] = min(1.0, step / total)
        if message is not None:
            fields["message"] = message
        self.store.update_run(self.run_id, **fields)

    def steps_begin(self, step: int) -> None:
        """The stage's step loop starts now, at `step` (loading the model and evaluating
        before training are over): the ETA's pace counts from here, so a run has an
        estimate from its first step on (a 2-step run too), not from its second."""
        if self.is_main_process:
            self._paced = True
            self.store.update_run(self.run_id, attempt_step=int(step), attempt_time=time.time())

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Store metrics of one step; a non-finite loss stops the run with a clear error."""
        clean = {k: float(v) for k, v in values.items() if v is not None}
        for name, value in clean.items():
            if "loss" in name and not math.isfinite(value):
                raise NonFiniteError(
                    f"step {step}: {name} is {value} (not finite); lower the learning rate "
                    f"or check the data")
        if self.is_main_process:
            finite = {k: v for k, v in clean.items() if math.isfinite(v)}
            self.store.log_metrics(self.run_id, step, finite)
            if self.trackers is not None:  # after the database: a tracker never loses a row
                self.trackers.metrics(step, finite)

    def samples(self, step: int, rows: list[dict]) -> None:
        if self.is_main_process and rows:
            self.store.add_samples(self.run_id, step, rows)

    def artifact(self, kind: str, path: str | Path) -> None:
        if self.is_main_process:
            self.store.add_artifact(self.run_id, kind, path, sha256_of(path))


def sha256_of(path: str | Path) -> str:
    """Hash of a file, or of a folder's files (names and contents, in sorted order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def config_dict(config: Any) -> dict:
    if is_dataclass(config):
        return asdict(config)
    return dict(config)


def execute(store: Store, run_id: int, config: Any, fn: Callable, resume: bool = False,
            cancel_event: threading.Event | None = None,
            agree: Callable[[bool], bool] | None = None,
            stopped: Callable[[BaseException], bool] | None = None) -> str:
    """Run one stage function as run `run_id`, recording its outcome. Returns the status.

    `agree`: see JobContext (several processes). `stopped(error)`: whether an error comes
    from outside the stage (another process of the launch died, the launcher stopped this
    one): the run is then `interrupted` (resumable), not `failed`."""
    from engine.runtime import trackers

    ctx = JobContext(store, run_id, config, resume=resume, cancel_event=cancel_event,
                     agree=agree)
    store.claim_run(run_id)
    ctx.log("resumed" if resume else "started")
    summary: dict = {}
    error = None
    try:
        ctx.trackers = trackers.open_for(ctx)
        summary = fn(config, ctx) or {}
        status, message, level = "succeeded", "finished", "info"
    except (JobCancelled, KeyboardInterrupt):
        status, message, level = "cancelled", "cancelled; the last checkpoint is kept", "info"
    except (NonFiniteError, CheckpointError, TrackerError, MemoryEstimateError) as exc:
        status, message, level, error = "failed", str(exc), "error", str(exc)
    except BaseException as exc:  # noqa: BLE001 - a failed job must never kill the app
        error = f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}"
        status, message, level = "failed", f"{type(exc).__name__}: {exc}", "error"
        if stopped is not None and stopped(exc):
            status = "interrupted"
            message = f"interrupted (another process of the launch stopped): {message}"
    if status == "succeeded":  # before: a failing write cannot undo the success
        store.update_run(run_id, progress=1.0)
    store.finish_run(run_id, status, error=error,
                     summary=summary if status == "succeeded" else None)
    ctx.log(message, level)
    if ctx.trackers is not None:  # after the run's own records
        ctx.trackers.finish(status, summary)
    return status


# runs a stage executes inline (the runs of a run group, engine.experiments.runner), by id
# -> the cancel event they run under: cancelling one (e.g. from the Runs page) sets it
INLINE_EVENTS: dict[int, threading.Event] = {}


class JobManager:
    """Process-wide queue of jobs on one database."""

    def __init__(self, store: Store):
        self.store = store
        # one queue and one worker thread per lane: "train", and "light:<model>" per model
        self._queues: dict[str, queue.Queue] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._events: dict[int, threading.Event] = {}
        self._done: dict[int, threading.Event] = {}
        self._live: set[int] = set()
        self._lock = threading.Lock()
        self.recovered = store.mark_interrupted_orphans()

    # -- submitting ----------------------------------------------------------------
    def submit(self, stage: str, config: Any = None, *, name: str | None = None,
               parents: list[int] | None = None, model: str | None = None,
               dataset: str | None = None) -> int:
        spec = stages.get(stage)
        config = spec.make_config(config)
        run_id = self.store.create_run(stage, config_dict(config), name=name, parents=parents,
                                       model=model or getattr(config, "model", None),
                                       dataset=dataset or getattr(config, "dataset", None))
        self._enqueue(run_id, stage, config, resume=False)
        return run_id

    def resume(self, run_id: int) -> int:
        """Queue an interrupted, cancelled or failed run again; it continues from its checkpoint."""
        run = self.store.get_run(run_id)
        if run["status"] not in RESUMABLE_STATES:
            raise ValueError(f"run {run_id} is {run['status']}; only interrupted, cancelled or "
                             f"failed runs can be resumed")
        spec = stages.get(run["stage"])
        config = spec.make_config(run["config"])
        self.store.requeue_run(run_id)
        self._enqueue(run_id, run["stage"], config, resume=True)
        return run_id

    def _enqueue(self, run_id: int, stage: str, config: Any, resume: bool) -> None:
        spec = stages.get(stage)
        # each queued item carries its own events: a run cancelled while queued and then
        # resumed has a stale item still in the queue, which must not run it a second time
        cancel, done = threading.Event(), threading.Event()
        with self._lock:
            self._events[run_id] = cancel
            self._done[run_id] = done
            self._live.add(run_id)
        self._lane(_lane_of(spec, config)).put((run_id, spec, config, resume, cancel, done))

    def _lane(self, lane: str) -> queue.Queue:
        """The queue of a lane, with a live worker thread behind it."""
        with self._lock:
            q = self._queues.setdefault(lane, queue.Queue())
            worker = self._workers.get(lane)
            if worker is None or not worker.is_alive():
                worker = threading.Thread(target=self._work, args=(q,), daemon=True,
                                          name=f"{lane}-worker")
                self._workers[lane] = worker
                worker.start()
            return q

    def _work(self, q: queue.Queue) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            self._run_one(*item)

    def _run_one(self, run_id: int, spec, config, resume: bool, cancel: threading.Event,
                 done: threading.Event) -> None:
        try:
            if cancel.is_set():  # cancelled while queued: cancel() recorded it
                return
            if self.store.get_run(run_id)["status"] != "queued":
                return  # cancelled while queued from another process
            if launched(config):  # several processes: `accelerate launch` (engine.runtime.launch)
                from engine.runtime.launch import run_launched

                run_launched(self.store, run_id, spec.name, config, resume=resume, cancel=cancel)
            else:
                execute(self.store, run_id, config, spec.function(), resume=resume,
                        cancel_event=cancel)
        except BaseException as exc:  # noqa: BLE001 - e.g. the stage failed to import
            self.store.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}\n\n"
                                                          f"{traceback.format_exc()}")
        finally:
            with self._lock:
                if self._done.get(run_id) is done:  # not a stale item of a resumed run
                    self._live.discard(run_id)
            done.set()

    # -- control -------------------------------------------------------------------
    def cancel(self, run_id: int) -> bool:
        """Ask a queued or running run to stop; it keeps its last checkpoint.

        A run of this manager stops within one step. A run of a headless CLI process
        (`python -m engine train ...`) is sent SIGTERM, which that process turns into the
        same cancel; the process must be the one that claimed the run (same host, started
        before the run: see storage.db.owner_process), so a reused pid is never signalled.
        A run nobody holds any more is recorded as cancelled. Returns False when the run
        was not active, or belongs to another app process (which must cancel it itself).
        """
        event = self._events.get(run_id) or INLINE_EVENTS.get(run_id)
        if event is not None:
            event.set()
            status = self.store.get_run(run_id)["status"]
            if status == "queued":
                self.store.finish_run(run_id, "cancelled")
            elif status == "running":
                self.store.request_cancel(run_id)  # stops at the end of its step
            return status in ACTIVE_STATES
        run = self.store.get_run(run_id)
        if run["status"] not in ACTIVE_STATES:
            return False
        owner = owner_process(run) if run.get("pid") != os.getpid() else None
        if owner is not None:
            if not _is_headless_cli(owner):
                self.store.log(run_id, f"cancel asked here, but the run belongs to another "
                                       f"app process (pid {owner.pid}): cancel it there",
                               "warning")
                return False
            try:
                owner.send_signal(signal.SIGTERM)  # psutil re-checks it is the same process
                self.store.request_cancel(run_id)
                return True
            except Exception:  # noqa: BLE001 - psutil.NoSuchProcess: it ended meanwhile
                if self.store.get_run(run_id)["status"] not in ACTIVE_STATES:
                    return False
        self.store.finish_run(run_id, "cancelled")  # nobody holds it any more
        return True

    def wait(self, run_id: int, timeout: float | None = None) -> str:
        done = self._done.get(run_id)
        if done is not None:
            done.wait(timeout)
        return self.store.get_run(run_id)["status"]

    def active(self) -> list[int]:
        with self._lock:
            return sorted(self._live)

    def shutdown(self) -> None:
        for event in self._events.values():
            event.set()
        with self._lock:
            for q in self._queues.values():
                q.put(None)


def _lane_of(spec, config: Any) -> str:
    """Training runs share one lane (one device); light jobs one lane per model."""
    if not spec.light:
        return "train"
    return f"light:{getattr(config, 'model', None) or ''}"


def lane_of_run(run: dict) -> str:
    """The lane of a stored run (as _lane_of); a stage unknown here counts as training."""
    try:
        light = bool(stages.get(run["stage"]).light)
    except (KeyError, ImportError, AttributeError):
        light = False
    if not light:
        return "train"
    return f"light:{(run.get('config') or {}).get('model') or ''}"


def queue_positions(store: Store, runs: list[dict] | None = None) -> dict[int, dict]:
    """Where each queued run stands, from storage: {run_id: {"lane", "position", "behind"}}.

    Runs of one lane run one at a time in the order they were queued (`enqueued`: a resumed
    run goes to the back). `position` is 1 for the next to run; `behind` is the run the lane
    is busy with ({"id", "name", "step", "total_steps"}; one of this process first, as its
    queue is the one the run waits in), or None when the lane is idle. `runs`: the active
    runs, when the caller already has them."""
    if runs is None:
        runs = store.list_runs(status=ACTIVE_STATES)
    lanes: dict[str, dict[str, list[dict]]] = {}
    for run in runs:
        if run["status"] in ACTIVE_STATES:
            lanes.setdefault(lane_of_run(run), {}).setdefault(run["status"], []).append(run)
    out: dict[int, dict] = {}
    for lane, by_status in lanes.items():
        running = sorted(by_status.get("running", []),
                         key=lambda r: (r.get("pid") != os.getpid(), r["id"]))
        behind = ({k: running[0].get(k) for k in ("id", "name", "step", "total_steps")}
                  if running else None)
        waiting = sorted(by_status.get("queued", []),
                         key=lambda r: (r.get("enqueued") or r.get("created") or 0, r["id"]))
        for position, run in enumerate(waiting, 1):
            out[run["id"]] = {"lane": lane, "position": position, "behind": behind}
    return out


def queue_position(store: Store, run_id: int) -> dict | None:
    """queue_positions of one run: None unless it is queued."""
    return queue_positions(store).get(int(run_id))


def _is_headless_cli(proc) -> bool:
    """Whether a process is `python -m engine ...` (which turns SIGTERM into a cancel),
    not e.g. a Streamlit server that SIGTERM would stop altogether."""
    try:
        args = proc.cmdline()
    except Exception:  # noqa: BLE001 - psutil.Error: gone, or not ours to inspect
        return False
    main = os.path.join("engine", "__main__.py")
    return any(a == "-m" and b == "engine" for a, b in zip(args, args[1:])) \
        or any(a == "-mengine" or a.endswith(main) for a in args)


@contextmanager
def sigterm_cancels(cancel: threading.Event):
    """While inside, SIGTERM sets `cancel` (the run stops as `cancelled` within one step,
    keeping its last checkpoint); a second SIGTERM stops it at once. Main thread only
    (elsewhere Python cannot install handlers: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt("SIGTERM twice: stopping now")
        cancel.set()  # no storage write here: the main thread may be inside one

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_managers: dict[str, JobManager] = {}
_managers_lock = threading.Lock()


def get_manager(store: Store | None = None) -> JobManager:
    """The one job manager of this process for a database."""
    store = store or Store()
    key = str(store.path.resolve())
    with _managers_lock:
        if key not in _managers:
            _managers[key] = JobManager(store)
        return _managers[key]


def run_sync(store: Store, stage: str, config: Any = None, *, name: str | None = None,
             parents: list[int] | None = None, run_id: int | None = None,
             resume: bool = False) -> dict:
    """Run a stage in the calling thread (the headless CLI): same code the pages use.

    Under `accelerate launch`/torchrun (WORLD_SIZE > 1) every process calls this; the run
    is recorded once: see run_distributed. A config asking for several processes
    (`processes` ≥ 2) outside a launch starts one (engine.runtime.launch) and waits for it.
    `run_id`: an existing queued run to run (the launched processes get it), `resume`: it
    continues from its last checkpoint.
    """
    spec = stages.get(stage)
    config = spec.make_config(config)
    if world_size() > 1:
        return run_distributed(store, stage, config, name=name, parents=parents,
                               run_id=run_id, resume=resume)
    if run_id is None:
        run_id = store.create_run(stage, config_dict(config), name=name, parents=parents,
                                  model=getattr(config, "model", None),
                                  dataset=getattr(config, "dataset", None))
    cancel = threading.Event()
    with sigterm_cancels(cancel):  # Cancel on the Runs page of another process sends SIGTERM
        if launched(config):
            from engine.runtime.launch import run_launched

            run_launched(store, run_id, stage, config, resume=resume, cancel=cancel)
        else:
            execute(store, run_id, config, spec.function(), resume=resume, cancel_event=cancel)
    return store.get_run(run_id)


def world_size() -> int:
    """Processes of this launch (set by `accelerate launch` / torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE") or 1)


def launched(config: Any) -> bool:
    """Whether a run of `config` starts its own `accelerate launch` (2+ processes asked for,
    and this process is not one of a launch already)."""
    return int(getattr(config, "processes", 1) or 1) > 1 and world_size() == 1


def run_distributed(store: Store, stage: str, config: Any, *, name: str | None = None,
                    parents: list[int] | None = None, run_id: int | None = None,
                    resume: bool = False) -> dict:
    """One run over several processes. The main process creates the run row (or takes
    `run_id`, queued or claimed by the launching job engine), broadcasts its id, and records
    the run exactly as `execute` does; every other process runs the same stage with a
    JobContext that never writes (may_write=False) and returns {"id", "status", "main":
    False} without touching storage. Cancel (SIGTERM to the main process) stops every
    process at the same check (JobContext.agree); SIGTERM from the launcher, when another
    process failed, makes the run `interrupted`."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from engine.inference.models import pick_device

    # the same `cpu` flag as train_utils.make_accelerator: a CPU-only launch runs on gloo
    state = PartialState(cpu=pick_device().type == "cpu")
    if state.num_processes != world_size():
        raise RuntimeError(f"WORLD_SIZE is {world_size()} but accelerate sees "
                           f"{state.num_processes} process(es) ({state.distributed_type})")
    spec = stages.get(stage)
    if state.is_local_main_process and getattr(config, "model", None) in (None, "", "embedded"):
        from engine.inference.models import ensure_embedded_cache

        ensure_embedded_cache()  # convert once per node before the other processes load it
    if hasattr(config, "processes"):
        config.processes = state.num_processes  # a resume relaunches as many
    box = [None]
    if state.is_main_process:
        if run_id is None:
            box[0] = store.create_run(stage, config_dict(config), name=name, parents=parents,
                                      model=getattr(config, "model", None),
                                      dataset=getattr(config, "dataset", None))
        elif store.get_run(run_id)["status"] in ACTIVE_STATES:
            box[0] = int(run_id)
        else:
            box[0] = -1  # cancelled before the processes were up: nothing to run
    got = int(broadcast_object_list(box, from_process=0)[0])
    if got < 0:
        return {**store.get_run(run_id), "main": state.is_main_process}
    agree = _any_process(state.device)
    if state.is_main_process:
        cancel, stopped = threading.Event(), []

        def on_sigterm(signum, frame):
            if stopped:
                raise KeyboardInterrupt("SIGTERM twice: stopping now")
            stopped.append(signum)
            cancel.set()  # every process stops at its next check; no storage write here

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            execute(store, got, config, spec.function(), resume=resume, cancel_event=cancel,
                    agree=agree, stopped=lambda exc: bool(stopped) or _peer_lost(exc))
        finally:
            signal.signal(signal.SIGTERM, previous)
        return {**store.get_run(got), "main": True}
    ctx = JobContext(store, got, config, resume=resume, may_write=False, agree=agree)
    try:
        summary = spec.function()(config, ctx) or {}
    except JobCancelled:
        return {"id": got, "status": "cancelled", "summary": {}, "error": None, "main": False}
    return {"id": got, "status": "succeeded", "summary": summary, "error": None,
            "main": False}


def _peer_lost(exc: BaseException) -> bool:
    """Whether an error is the communication backend's (gloo, NCCL): another process of the
    launch is gone, as when it crashed or was killed."""
    import torch.distributed as dist

    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(k in text for k in ("gloo", "NCCL", "nccl"))


def _any_process(device) -> Callable[[bool], bool]:
    """A collective: True on every process when any process passes True."""
    import torch
    import torch.distributed as dist

    def agree(flag: bool) -> bool:
        if not dist.is_initialized():
            return flag
        t = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    return agree
