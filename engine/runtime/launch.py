"""A run of several processes: `accelerate launch … -m engine train STAGE --run-id N`.

The job engine (a page's Start, a Resume) and the CLI (`--set processes=2`) run a training
stage whose `processes` setting is 2 or more through `run_launched`: it writes the run's
config to `<run_dir>/launch-config.json`, starts accelerate's launcher in a process group
of its own (its output goes to `<run_dir>/launch.log`), and waits. The launched processes
record the run exactly as `accelerate launch -m engine train …` typed by hand does
(engine.runtime.jobs.run_distributed: rank 0 writes, the others only train), so its
progress, metrics, logs and samples reach the pages through SQLite as for any run.

Cancel: the launcher's rank 0 is sent SIGTERM; it asks every process to stop at the same
point of the step (JobContext.check_cancel agrees across processes), the last finished
step is saved, and the run ends `cancelled`. Before rank 0 has claimed the run (still
starting), the whole process group is stopped instead. When the launch ends and the run is
still active (nobody could record its end), the run becomes `cancelled` if a cancel was
asked, `failed` if its processes never started it (the launcher itself failed: a bad
accelerate config, a missing package), else `interrupted` (a process was killed); Resume
continues it from its last checkpoint with the same number of processes.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL = 2000  # characters of launch.log kept in an interrupted run's error


def processes_of(config: Any) -> int:
    return int(getattr(config, "processes", 1) or 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(stage: str, run_id: int, db: str | os.PathLike, config_file: str | os.PathLike,
            processes: int, accelerate_config: str = "", resume: bool = False,
            cpu: bool = True) -> list[str]:
    """The launcher's command line. Without a config file: one machine, data-parallel
    (`--multi_gpu`, which runs on gloo on a machine without a GPU); with one (a shipped
    preset or the user's file) its settings, with this run's number of processes."""
    from engine.schema import accelerate_config_path

    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", str(accelerate_config_path(accelerate_config))]
    else:
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]
    cmd += ["--num_processes", str(processes), "--main_process_port", str(free_port())]
    if cpu:  # the cores shared out between the processes (accelerate's default is 1 each)
        cmd += ["--num_cpu_threads_per_process", str(max(1, _cores() // processes))]
    cmd += ["-m", "engine", "--db", str(db), "train", stage, "--config", str(config_file),
            "--run-id", str(int(run_id))]
    return cmd + (["--resume"] if resume else [])


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_launched(store, run_id: int, stage: str, config: Any, resume: bool = False,
                 cancel: threading.Event | None = None) -> str:
    """Run `run_id` under `accelerate launch` with `config.processes` processes and wait
    for it; returns the run's final status (see the module docstring)."""
    from engine.inference.models import pick_device, run_dir
    from engine.runtime.jobs import config_dict
    from storage.db import ACTIVE_STATES

    cancel = cancel or threading.Event()
    folder = run_dir(run_id)
    config_file = folder / "launch-config.json"
    config_file.write_text(json.dumps(config_dict(config), indent=1))
    cmd = command(stage, run_id, store.path, config_file, processes_of(config),
                  getattr(config, "accelerate_config", ""), resume,
                  cpu=pick_device().type == "cpu")
    store.claim_run(run_id)  # running from now on: the page shows the processes starting
    store.log(run_id, f"{'resuming' if resume else 'starting'} on {processes_of(config)} "
                      f"processes: accelerate launch (output in {folder / 'launch.log'})")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    log_path = folder / "launch.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    store.update_run(run_id, pid=proc.pid)  # the launcher holds it until rank 0 claims it
    asked = False
    while True:
        try:
            proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt:  # Ctrl-C in the CLI: the launch (its own session) cancels
            cancel.set()
        if cancel.is_set() and not asked:
            asked = True
            _stop(proc, store.get_run(run_id))
    run = store.get_run(run_id)
    if run["status"] in ACTIVE_STATES:  # nobody recorded the end: a process was killed
        if cancel.is_set():
            store.finish_run(run_id, "cancelled")
            store.log(run_id, "cancelled before the processes had started training")
        else:
            # the processes never started the run (no rank 0 claimed it): the launch itself
            # failed (a bad accelerate config, a missing package), and resuming cannot help
            started = run.get("pid") != proc.pid
            status = "interrupted" if started else "failed"
            what = "before the run was recorded as finished" if started else \
                "before its processes started the run"
            tail = log_path.read_text(errors="replace")[-LOG_TAIL:]
            last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
            store.finish_run(run_id, status, error=f"the launch ended (exit code "
                                                   f"{proc.returncode}) {what}: {last}\n\n"
                                                   f"launch.log ends with:\n{tail}")
            store.log(run_id, f"{status}: the launch ended with exit code {proc.returncode} "
                              f"{what}", "error")
    return store.get_run(run_id)["status"]


def _stop(proc: subprocess.Popen, run: dict) -> None:
    """Ask rank 0 (a process of this launch that has claimed the run) to cancel; before
    it has, stop the whole launch."""
    import psutil

    pid = run.get("pid")
    try:
        children = {p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)}
    except psutil.Error:
        children = {}
    if pid in children:
        try:
            children[pid].send_signal(signal.SIGTERM)
            return
        except psutil.Error:
            pass
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
