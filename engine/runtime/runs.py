"""Run management: one overview of every run, its key metric, cloning and deleting.

No SQL here (storage does that) and no Streamlit (the runs page calls these).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from engine.runtime import stages
from engine.runtime.jobs import config_dict
from storage import Store, data_home
from storage.db import ACTIVE_STATES, RESUMABLE_STATES  # noqa: F401 - re-exported for pages

# Per stage, the metric that says most about a finished run, as name fragments in order of
# preference ("eval_loss", "eval/loss" and "loss_eval" all match ("eval", "loss")).
KEY_METRICS: dict[str, tuple[tuple[str, ...], ...]] = {
    "sft": (("eval", "loss"), ("loss",)),
    "reward": (("eval", "acc"), ("acc",), ("eval", "loss"), ("loss",)),
    "ppo": (("score", "mean"), ("score",), ("reward", "mean"), ("reward",), ("kl",)),
    "grpo": (("reward", "mean"), ("kl",)),
    "dpo": (("eval", "reward", "acc"), ("reward", "acc"), ("eval", "loss"), ("loss",)),
    "compare": (("win",), ("reward",)),
    "pair_sample": (("seconds",),),  # how long the two answers took
    "export": (),                    # ids and timestamps only: no number to show
    "try": (("seconds",),),          # the "try it" and tester jobs: how long they took
    "score_text": (("seconds",),),
    "experiment": (),                # a run group's own run: its group id is not a result
}
DEFAULT_KEY = (("eval", "loss"), ("loss",), ("acc",), ("score",), ("reward",))


def key_metric(run: dict) -> tuple[str | None, float | None]:
    """The run's most telling final number: (name, value), from its last logged metrics
    (`run["last_metrics"]`) first, then its summary; (None, None) when it has none."""
    last = {k: v for k, v in (run.get("last_metrics") or {}).items() if _is_number(v)}
    summary = {k: v for k, v in (run.get("summary") or {}).items() if _is_number(v)}
    for source in (last, summary):
        for fragments in KEY_METRICS.get(run.get("stage"), DEFAULT_KEY):
            names = sorted(n for n in source if all(f in n.lower() for f in fragments))
            if names:
                # "loss" over "policy_loss": prefer the shortest matching name
                name = min(names, key=len)
                return name, float(source[name])
    if run.get("stage") in KEY_METRICS:  # a known stage without its metric: show none
        return None, None
    for source in (last, summary):
        if source:
            name = sorted(source)[0]
            return name, float(source[name])
    return None, None


def duration(run: dict, now: float | None = None) -> float | None:
    """Seconds the run ran: its earlier attempts (`earlier_seconds`, added by each resume)
    and this one, from its claim to its finish (to now while it is running). The time a
    run sat cancelled or interrupted before a resume is not counted; a run queued again
    after a resume shows its earlier attempts only."""
    started = run.get("started")
    if not started:
        return None
    earlier = run.get("earlier_seconds") or 0.0
    began = run.get("claimed") or started
    if run.get("status") == "running":
        end = now or time.time()
    elif run.get("finished"):
        end = run["finished"]
    else:
        return earlier or None
    return earlier + max(0.0, end - began)


def is_light(stage: str) -> bool:
    """Whether a stage is a light job (sampling a pair, a comparison, an export, a "try it"):
    quick helpers of a page, hidden from the runs list unless asked for. Unknown: no."""
    try:
        return bool(stages.get(stage).light)
    except (KeyError, ImportError, AttributeError):
        return False


def overview(store: Store, stages_: Iterable[str] | None = None,
             statuses: Iterable[str] | None = None, search: str = "",
             show_light: bool = False) -> list[dict]:
    """Every run (newest first) as a flat row for the runs table, filtered as filter_rows."""
    now = time.time()
    rows = []
    for run in store.runs_overview():
        name, value = key_metric(run)
        rows.append({"id": run["id"], "name": run["name"], "stage": run["stage"],
                     "status": run["status"], "model": run.get("model") or "",
                     "dataset": run.get("dataset") or "",
                     "parents": ", ".join(f"#{p}" for p in run.get("parents") or []),
                     "started": run.get("started"), "duration": duration(run, now),
                     "metric": name or "", "value": value, "step": run.get("step") or 0,
                     "total_steps": run.get("total_steps") or 0,
                     "n_metrics": run.get("n_metrics", 0), "light": is_light(run["stage"]),
                     "cancel_requested": run.get("cancel_requested")})
    return filter_rows(rows, stages_, statuses, search, show_light)


def filter_rows(rows: list[dict], stages_: Iterable[str] | None = None,
                statuses: Iterable[str] | None = None, search: str = "",
                show_light: bool = False) -> list[dict]:
    """Rows of the given stages and statuses (none given: all) whose name contains
    `search` (case-insensitive; "#12" or "12" also finds run 12). Light jobs (is_light)
    are left out unless show_light, or their stage is one of `stages_`."""
    stages_, statuses = set(stages_ or []), set(statuses or [])
    needle = (search or "").strip().lower()
    out = []
    for row in rows:
        if stages_ and row["stage"] not in stages_:
            continue
        if row.get("light") and not show_light and row["stage"] not in stages_:
            continue
        if statuses and row["status"] not in statuses:
            continue
        if needle and needle not in row["name"].lower() \
                and needle.lstrip("#") != str(row["id"]):
            continue
        out.append(row)
    return out


def common_metric_names(store: Store, run_ids: Iterable[int]) -> list[str]:
    """Metric names that every one of the runs logged (for overlaying their curves)."""
    names: set[str] | None = None
    for rid in run_ids:
        mine = set(store.metric_names(rid))
        names = mine if names is None else names & mine
    return sorted(names or [])



# -- reward against KL ---------------------------------------------------------------
# The trade-off the RL stages make: how much reward a run bought with how far it moved from
# its reference. Per stage, (x = KL to the reference, y = reward) metric pairs in order of
# preference, both logged at the same steps: PPO and GRPO log theirs every step (PPO's
# reward-model score, GRPO's weighted rewards); DPO has no sampled reward, so its
# implicit-reward margin (then accuracy) on held-out pairs, beside the KL of its greedy
# answers, both at each evaluation.
REWARD_KL_METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "ppo": (("kl", "score_mean"), ("kl", "rlhf_reward")),
    "grpo": (("kl", "reward_mean"),),
    "dpo": (("kl_to_ref", "eval_reward_margin"), ("kl_to_ref", "eval_reward_accuracy")),
}


def reward_kl_pair(store: Store, run: dict) -> tuple[str, str] | None:
    """(kl metric, reward metric) of a run from REWARD_KL_METRICS: the first pair it logged
    both of; None for a stage without one, or a run that logged neither pair."""
    pairs = REWARD_KL_METRICS.get(run.get("stage"), ())
    if not pairs:
        return None
    names = set(store.metric_names(run["id"]))
    return next(((x, y) for x, y in pairs if x in names and y in names), None)


def reward_vs_kl(store: Store, run_ids: Iterable[int]) -> list[dict]:
    """The (KL, reward) points of runs, one per step that logged both of the run's pair:
    [{"run", "stage", "step", "kl", "reward", "kl_metric", "reward_metric"}], by run then
    step. Runs without a pair are left out."""
    points = []
    for rid in run_ids:
        run = store.get_run(rid)
        pair = reward_kl_pair(store, run)
        if pair is None:
            continue
        x, y = pair
        steps: dict[int, dict[str, float]] = {}
        for m in store.get_metrics(rid, [x, y]):
            steps.setdefault(m["step"], {})[m["name"]] = m["value"]
        for step in sorted(steps):
            values = steps[step]
            if _is_number(values.get(x)) and _is_number(values.get(y)):
                points.append({"run": int(rid), "stage": run["stage"], "step": step,
                               "kl": float(values[x]), "reward": float(values[y]),
                               "kl_metric": x, "reward_metric": y})
    return points

# -- cloning -------------------------------------------------------------------------
def clone_config(store: Store, run_id: int) -> tuple[str, dict]:
    """(stage, config) of a run, completed with the stage's current defaults."""
    run = store.get_run(run_id)
    return run["stage"], validate_config(run["stage"], run["config"])


def validate_config(stage: str, config: dict | str) -> dict:
    """A config for `stage` (a dict or JSON text) checked against the stage's dataclass;
    raises ValueError naming the problem (bad JSON, unknown field)."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError("config must be a JSON object")
    try:
        made = stages.get(stage).make_config(config)
    except TypeError as exc:
        raise ValueError(f"config: {exc}") from exc
    return config_dict(made)


def clone_run(jobs, run_id: int, config: dict | str | None = None,
              name: str | None = None) -> int:
    """Submit a new run of the same stage with the run's config (or an edited one),
    keeping its parents, model and dataset. `jobs` is the JobManager. Returns the new id."""
    store = jobs.store
    run = store.get_run(run_id)
    cfg = validate_config(run["stage"], run["config"] if config is None else config)
    return jobs.submit(run["stage"], cfg, name=name or None, parents=run.get("parents") or None,
                       model=cfg.get("model") or run.get("model"),
                       dataset=cfg.get("dataset") or run.get("dataset"))


# -- deleting ------------------------------------------------------------------------
def run_folder(run_id: int) -> Path:
    """The run's folder (`engine.inference.models.run_dir`) without creating it."""
    return data_home() / "runs" / str(int(run_id))


def delete_run(store: Store, run_id: int) -> dict:
    """Delete a finished run: its rows (run, metrics, samples, logs, artifacts) and its
    folder `runs/<id>/` — nothing else, not even artifact files it registered elsewhere.
    A queued or running run must be cancelled first. Returns what was removed."""
    run = store.get_run(run_id)
    if run["status"] in ACTIVE_STATES:
        raise ValueError(f"run {run_id} is {run['status']}; cancel it before deleting it")
    folder = run_folder(run_id)
    runs_root = (data_home() / "runs").resolve()
    removed_files = 0
    if folder.is_symlink():
        folder.unlink()  # never follow a link out of the runs folder
    elif folder.exists():
        if folder.resolve().parent != runs_root:
            raise ValueError(f"refusing to delete {folder}: not a run folder under {runs_root}")
        removed_files = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder)
    store.delete_run(run_id)
    return {"run_id": int(run_id), "folder": str(folder), "files": removed_files}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


# -- comparing -----------------------------------------------------------------------
def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"lora.r": 16, ...}."""
    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_diff(runs: list[dict]) -> list[dict]:
    """The config fields whose values differ between runs: [{"field", "#<id>": value, ...}]."""
    flat = [(run["id"], flatten(run.get("config") or {})) for run in runs]
    keys = sorted(set().union(*(f.keys() for _, f in flat))) if flat else []
    rows = []
    for key in keys:
        values = [f.get(key) for _, f in flat]
        if any(json.dumps(v, sort_keys=True, default=str)
               != json.dumps(values[0], sort_keys=True, default=str) for v in values[1:]):
            rows.append({"field": key, **{f"#{rid}": _cell(f.get(key)) for rid, f in flat}})
    return rows


def children(store: Store, run_id: int) -> list[dict]:
    """Runs that name this run as a parent (they lose their source if it is deleted)."""
    return [r for r in store.list_runs() if int(run_id) in (r.get("parents") or [])]


def _cell(value: Any) -> str:
    return "—" if value is None else value if isinstance(value, str) else json.dumps(value)
