"""Running a run group: the `experiment` stage and the engine API of pages and CLI.

The `experiment` stage (training lane) runs its group's planned runs one after another,
inline on the training worker, each through `jobs.execute` with the experiment's cancel
event: a planned run that already succeeded is skipped, one cancelled, interrupted or
failed is resumed from its checkpoint, any other is created (tagged with the group and its
plan key) and run after its refs are resolved. A child that fails is recorded; the runs
that ref it are skipped with the reason, the others still run, and the group ends
`failed`. Cancelling the experiment run cancels the child in flight and leaves the group
`cancelled`; resuming it continues where it stopped. At the end a recipe's `summarize`
(or, for a sweep, a table of the varied values and the stage's main metrics) is stored as
the group's summary.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from engine import schema
from engine.errors import JobCancelled
from engine.experiments.catalogue import get_recipe
from engine.experiments.plan import (Chart, PlannedRun, expand_sweep, refs_of, resolve_refs,
                                     value_text)
from engine.runtime import jobs, stages
from engine.schema import ConfigError, StageConfig, setting
from storage import NotFound, Store
from storage.db import ACTIVE_STATES, RESUMABLE_STATES, owner_process

STAGE = "experiment"

# the metrics a sweep's summary table and charts read, per stage (last value of each run)
MAIN_METRICS: dict[str, tuple[str, ...]] = {
    "ppo": ("score_mean", "kl", "clipfrac", "response_length"),
    "grpo": ("reward_mean", "kl", "clipfrac", "response_length"),
    "dpo": ("loss", "reward_accuracy", "reward_margin", "eval_reward_accuracy"),
    "sft": ("train_loss", "eval_loss"),
    "reward": ("loss", "accuracy", "eval_accuracy"),
}
# the curves a sweep's group view overlays (one chart per metric, one line per run)
SWEEP_CHARTS: dict[str, tuple[str, ...]] = {
    "ppo": ("score_mean", "kl", "clipfrac"),
    "grpo": ("reward_mean", "kl", "clipfrac"),
    "dpo": ("loss", "reward_margin", "kl_to_ref"),
    "sft": ("train_loss", "eval_loss"),
    "reward": ("loss", "accuracy"),
}


@dataclass
class ExperimentConfig(StageConfig):
    """The `experiment` stage runs one stored run group."""
    group_id: int = setting(0, min=1, widget="hidden")
    model: str = setting("embedded", widget="hidden")


class GroupFailed(RuntimeError):
    """A group whose runs did not all succeed (the message lists the reasons)."""


def plan_of(group: dict) -> list[PlannedRun]:
    return [PlannedRun.from_dict(d) for d in (group.get("config") or {}).get("plan", [])]


def latest_by_key(store: Store, group_id: int) -> dict[str, dict]:
    """The newest run of each plan key of a group (deleted runs are simply absent)."""
    out: dict[str, dict] = {}
    for run in store.group_runs(group_id):
        if run.get("group_key"):
            out[run["group_key"]] = run
    return out


def run_experiment(config: ExperimentConfig, ctx: jobs.JobContext) -> dict:
    store, group_id = ctx.store, int(config.group_id)
    group = store.get_group(group_id)
    plan = plan_of(group)
    n = len(plan)
    store.update_group(group_id, status="running", run_id=ctx.run_id)
    ids: dict[str, int] = {}
    problems: dict[str, str] = {}     # key -> why it failed or was skipped
    try:
        for k, planned in enumerate(plan):
            ctx.check_cancel()
            label = planned.label or planned.key
            ctx.progress(k, n, f"{k + 1}/{n} {label}")
            existing = latest_by_key(store, group_id).get(planned.key)
            if existing is not None and existing["status"] == "succeeded":
                ids[planned.key] = existing["id"]
                continue
            missing = [r for r in refs_of(planned.config) if r not in ids]
            if missing:
                why = ", ".join(f"{r} ({problems.get(r, 'not run')})" for r in missing)
                problems[planned.key] = f"skipped: needs {why}"
                ctx.log(f"{planned.key}: {problems[planned.key]}", "warning")
                continue
            status, run_id, error = _run_child(ctx, group, planned, existing, ids)
            if status == "cancelled":
                raise JobCancelled(f"group {group_id} cancelled during {planned.key}")
            if status == "succeeded":
                ids[planned.key] = run_id
            else:
                problems[planned.key] = f"{status}: {error}" if error else status
        # a cancel asked during the last run, which finished its work anyway: the group
        # still ends cancelled, as asked (a resume only writes the summary)
        ctx.check_cancel()
        ctx.progress(n, n, f"{n}/{n}")
        summary = summarize_group(store, store.get_group(group_id))
        summary["problems"] = problems
        store.update_group(group_id, summary=summary,
                           status="failed" if problems else "succeeded")
    except JobCancelled:
        store.update_group(group_id, status="cancelled")
        raise
    except BaseException as exc:
        store.update_group(group_id, status="failed",
                           summary={**store.get_group(group_id)["summary"],
                                    "problems": {**problems, "group": f"{type(exc).__name__}: {exc}"}})
        raise
    if problems:
        raise GroupFailed("; ".join(f"{k}: {v}" for k, v in problems.items()))
    return {"group_id": group_id, "runs": n, "run_ids": ids}


def _parents(config: Any) -> list[int]:
    """The finished runs a config names (its SFT run, reward models, ...): a child's lineage."""
    data = jobs.config_dict(config)
    return sorted({i for k, v in data.items() if k.endswith(("_run", "_runs"))
                   for i in _run_ids(v)})


def _run_child(ctx: jobs.JobContext, group: dict, planned: PlannedRun, existing: dict | None,
               ids: dict[str, int]) -> tuple[str, int | None, str | None]:
    """Run (or resume) one planned run inline; (status, run id, first line of its error)."""
    store = ctx.store
    try:
        spec = stages.get(planned.stage)
        if existing is not None:
            config = spec.make_config(existing["config"])
        else:
            config = spec.make_config(resolve_refs(planned.config, ids))
    except (ConfigError, KeyError, ImportError) as exc:
        return "failed", None, str(exc)
    resume = False
    if existing is None:
        run_id = store.create_run(
            planned.stage, jobs.config_dict(config),
            name=f"{group['name']} · {planned.label or planned.key}",
            parents=[ids[r] for r in refs_of(planned.config)] + _parents(config),
            model=getattr(config, "model", None), dataset=getattr(config, "dataset", None),
            group_id=group["id"], group_key=planned.key)
    else:
        run_id = existing["id"]
        if existing["status"] == "running" and existing.get("pid") != os.getpid() \
                and owner_process(existing) is not None:
            return "failed", run_id, "another process is running it"
        resume = existing["status"] in RESUMABLE_STATES or existing["status"] == "running"
        store.requeue_run(run_id)
    jobs.INLINE_EVENTS[run_id] = ctx.cancel_event
    try:
        status = jobs.execute(store, run_id, config, spec.function(), resume=resume,
                              cancel_event=ctx.cancel_event)
    finally:
        jobs.INLINE_EVENTS.pop(run_id, None)
    error = store.get_run(run_id).get("error")
    return status, run_id, (error or "").split("\n\n")[0] or None


# -- summaries ------------------------------------------------------------------------------
def summarize_group(store: Store, group: dict) -> dict:
    """A recipe's own summary (its `summarize`), or a sweep's table."""
    runs = latest_by_key(store, group["id"])
    if group.get("recipe"):
        recipe = get_recipe(group["recipe"])
        return dict(recipe.summarize(store, group, runs) or {})
    table = sweep_table(store, group, runs)
    base = (group.get("config") or {}).get("base") or {}
    return {"table": table, "sentence": sweep_sentence(group, table),
            "page_settings": page_settings(store, group.get("stage") or "", base)}


def _run_ids(value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


def page_settings(store: Store, stage: str, config: dict) -> list[dict]:
    """The settings a stage's page chooses itself (its runs, dataset and reward: schema
    widget "page", the model aside) as a sweep's runs got them: one {name, value, runs}
    each, `runs` the [{id, name}] of a setting naming runs (`*_run`, `*_runs`; name None:
    deleted since). The Experiments page and the summary say from these what the runs
    started from and were scored by (e.g. SFT run #7, reward model #10)."""
    try:
        cls = stages.get(stage).config_cls
    except (KeyError, ImportError):
        return []
    full = schema.to_dict(schema.from_dict(cls, config)) if config else schema.to_dict(cls())
    out = []
    for info in schema.describe(cls):
        if info.meta.widget != "page" or info.name == "model":
            continue
        value = full.get(info.name, info.default)
        item: dict[str, Any] = {"name": info.name, "value": value}
        if info.name.endswith(("_run", "_runs")):
            item["runs"] = []
            for run_id in _run_ids(value):
                try:
                    item["runs"].append({"id": run_id, "name": store.get_run(run_id)["name"]})
                except NotFound:
                    item["runs"].append({"id": run_id, "name": None})
        out.append(item)
    return out


# a sweep's sentence names its best and worst run by the stage's key metric
SWEEP_KEY: dict[str, tuple[str, str]] = {
    "ppo": ("score_mean", "high"), "grpo": ("reward_mean", "high"),
    "dpo": ("loss", "low"), "sft": ("train_loss", "low"), "reward": ("accuracy", "high"),
}


def sweep_sentence(group: dict, table: list[dict]) -> dict | None:
    """{"key", "params"}: the best and worst final value of the stage's key metric (the
    `metric` param is a metric's name, which the page and the CLI show by its label)."""
    metric, better = SWEEP_KEY.get(group.get("stage") or "", (None, None))
    rows = [r for r in table if metric and isinstance(r.get(metric), (int, float))
            and r.get("status") == "succeeded"]
    if len(rows) < 2:
        return None
    rows.sort(key=lambda r: r[metric], reverse=better == "high")
    varied = list((group.get("config") or {}).get("vary") or {})

    def label(row: dict) -> str:
        return ", ".join(f"{k}={value_text(row[k])}" for k in varied if k in row) or row["key"]

    best, worst = rows[0], rows[-1]
    if f"{best[metric]:.4g}" == f"{worst[metric]:.4g}":  # no run did better than another
        return {"key": "experiments.sweep_same",
                "params": {"metric": metric, "value": f"{best[metric]:.4g}", "n": len(rows)}}
    return {"key": f"experiments.sweep_best_{better}",
            "params": {"metric": metric, "best": f"{best[metric]:.4g}", "best_run": label(best),
                       "worst": f"{worst[metric]:.4g}", "worst_run": label(worst),
                       "n": len(rows)}}


def sweep_table(store: Store, group: dict, runs: dict[str, dict]) -> list[dict]:
    """One row per planned run: its key, varied values, run id, status, the last values of
    the stage's main metrics, and the run's own summary (a dict under "summary")."""
    rows = []
    for planned in plan_of(group):
        run = runs.get(planned.key)
        row: dict[str, Any] = {"key": planned.key, **planned.varied,
                               "run_id": run["id"] if run else None,
                               "status": run["status"] if run else "pending"}
        last = store.last_metrics(run["id"]) if run else {}
        for name in MAIN_METRICS.get(planned.stage, ()):
            row[name] = last.get(name)
        row["summary"] = (run.get("summary") or {}) if run else {}
        rows.append(row)
    return rows


def charts_of(group: dict) -> list[Chart]:
    if group.get("recipe"):
        try:
            charts = get_recipe(group["recipe"]).charts
        except KeyError:
            return []
        # a chart of planned runs the group's size left out (PPO at ppo_steps = 0) is dropped
        planned = {p.key for p in plan_of(group)}
        return [c for c in charts if c.runs is None or not planned or planned & set(c.runs)]
    stage = group.get("stage") or ""
    return [Chart(f"metrics.{m}", [m]) for m in SWEEP_CHARTS.get(stage, ())]


# -- the API of pages and CLI ----------------------------------------------------------------
def _default_name(stage: str, vary: dict) -> str:
    return f"{stage} · " + " × ".join(vary)


def create_sweep(store: Store, stage: str, base: dict | None, vary: dict[str, list],
                 name: str | None = None) -> int:
    """Validate the whole sweep (expand_sweep), then store it as a group (no run yet)."""
    if stage not in stages.training_stages():
        raise ConfigError(None, f"{stage!r} is not a training stage; known: "
                                f"{', '.join(stages.training_stages())}")
    plan = expand_sweep(stage, base or {}, vary)
    return store.create_group(name or _default_name(stage, vary),
                              {"kind": "sweep", "base": base or {}, "vary": vary,
                               "plan": [p.to_dict() for p in plan]}, stage=stage)


def check_plan(plan: list[PlannedRun]) -> None:
    """Keys unique, refs to earlier keys only, every config valid (refs taken as run 1)."""
    seen: set[str] = set()
    for planned in plan:
        if planned.key in seen:
            raise ConfigError(None, f"planned run {planned.key!r} is listed twice")
        for r in refs_of(planned.config):
            if r not in seen:
                raise ConfigError(planned.key, f"refers to {r!r}, which does not run before it")
        stages.get(planned.stage).make_config(resolve_refs(planned.config,
                                                           {r: i + 1 for i, r in enumerate(seen)}))
        seen.add(planned.key)


def create_recipe_group(store: Store, name: str, settings: Any = None,
                        group_name: str | None = None) -> int:
    recipe = get_recipe(name)
    settings = recipe.make_settings(settings)
    plan = list(recipe.plan(settings))
    check_plan(plan)
    return store.create_group(group_name or name,
                              {"kind": "recipe", "settings": schema.to_dict(settings),
                               "plan": [p.to_dict() for p in plan]},
                              recipe=name)


def _start(manager: jobs.JobManager, store: Store, group_id: int) -> int:
    group = store.get_group(group_id)
    store.update_group(group_id, status="queued")   # before: the worker may start it at once
    run_id = manager.submit(STAGE, {"group_id": group_id}, name=group["name"])
    store.update_group(group_id, run_id=run_id)
    return run_id


def submit_sweep(manager: jobs.JobManager, store: Store, stage: str, base: dict | None,
                 vary: dict[str, list], name: str | None = None) -> int:
    """Queue a sweep on the training lane; returns the group id (nothing stored if invalid)."""
    group_id = create_sweep(store, stage, base, vary, name)
    _start(manager, store, group_id)
    return group_id


def submit_recipe(manager: jobs.JobManager, store: Store, name: str, settings: Any = None) -> int:
    group_id = create_recipe_group(store, name, settings)
    _start(manager, store, group_id)
    return group_id


def run_group_sync(store: Store, group_id: int) -> dict:
    """Run a stored group in this thread (the CLI; SIGTERM cancels): its experiment run."""
    group = store.get_group(group_id)
    return jobs.run_sync(store, STAGE, {"group_id": group_id}, name=group["name"])


def cancel_group(manager: jobs.JobManager, store: Store, group_id: int) -> bool:
    """Cancel the group's experiment run (and so the child in flight). Both show as
    cancelling (`cancel_requested`) at once, until the child's step ends."""
    group = store.get_group(group_id)
    run = _run_or_none(store, group.get("run_id"))
    if run is not None and run["status"] in ACTIVE_STATES:
        if manager.cancel(run["id"]):
            if run["status"] == "queued" or group["status"] == "queued":
                store.update_group(group_id, status="cancelled")
            for child in store.group_runs(group_id):
                if child["status"] == "running":
                    store.request_cancel(child["id"])
            return True
        return False
    if group["status"] in ACTIVE_STATES:  # nobody runs it any more
        store.update_group(group_id, status="cancelled")
        return True
    return False


def resume_group(manager: jobs.JobManager, store: Store, group_id: int) -> int:
    """Queue the group again: its experiment run resumes (a new one if it was deleted);
    runs that succeeded are kept, the others resume or start. Returns the experiment run."""
    group = store.get_group(group_id)
    run = _run_or_none(store, group.get("run_id"))
    if run is not None and run["status"] in ACTIVE_STATES:
        raise ValueError(f"group {group_id} is already {run['status']}")
    if run is not None and run["status"] in RESUMABLE_STATES:
        store.update_group(group_id, status="queued")
        manager.resume(run["id"])
        return run["id"]
    return _start(manager, store, group_id)


def _run_or_none(store: Store, run_id: int | None) -> dict | None:
    if not run_id:
        return None
    try:
        return store.get_run(run_id)
    except NotFound:
        return None


def cancelling(store: Store, group: dict) -> bool:
    """A cancel was asked and the group's experiment run has not stopped yet."""
    if group["status"] not in ACTIVE_STATES:
        return False
    run = _run_or_none(store, group.get("run_id"))
    return run is not None and run["status"] in ACTIVE_STATES \
        and bool(run.get("cancel_requested"))


def effective_status(store: Store, group: dict) -> str:
    """The group's status; an active group whose experiment run stopped (a crash, a
    deleted run) shows that run's state (`interrupted` when it is gone)."""
    status = group["status"]
    if status in ACTIVE_STATES:
        run = _run_or_none(store, group.get("run_id"))
        if run is None:
            return "interrupted" if group.get("run_id") else status
        if run["status"] not in ACTIVE_STATES:
            return run["status"]
    return status


def list_groups(store: Store) -> list[dict]:
    """Every group with its status, `done` (runs succeeded) and `total` (planned runs)."""
    out = []
    for group in store.list_groups():
        group["status"] = effective_status(store, group)
        group["cancelling"] = cancelling(store, group)
        group["total"] = len((group["config"] or {}).get("plan", []))
        group["done"] = group["counts"].get("succeeded", 0)
        out.append(group)
    return out


def group_view(store: Store, group_id: int) -> dict:
    """What a group's page shows: the group (status, cancelling, done/total, progress), one
    row per planned run (its run, or none yet / deleted), the metric rows the charts draw
    ({key, label, run_id, step, name, value}), the charts and the summary."""
    group = store.get_group(group_id)
    group["status"] = effective_status(store, group)
    group["cancelling"] = cancelling(store, group)
    plan = plan_of(group)
    runs = latest_by_key(store, group_id)
    charts = charts_of(group)
    wanted = set()
    hist = any(c.kind == "hist" for c in charts)
    for chart in charts:
        wanted.update(chart.metrics)
        if chart.x != "step":
            wanted.add(chart.x)
    rows, metrics = [], []
    done, partial = 0, 0.0
    for planned in plan:
        run = runs.get(planned.key)
        label = planned.label or planned.key
        row = {"key": planned.key, "label": label, "stage": planned.stage,
               "varied": planned.varied, "run_id": None, "status": "pending", "step": None,
               "total_steps": None, "progress": 0.0, "message": None, "summary": {},
               "error": None}
        if run is not None:
            row.update({k: run.get(k) for k in ("step", "total_steps", "message", "summary",
                                                "error", "status", "cancel_requested")},
                       run_id=run["id"], progress=float(run.get("progress") or 0.0))
            done += run["status"] == "succeeded"
            if run["status"] == "running":
                partial = row["progress"]
            for m in store.get_metrics(run["id"]):
                if m["name"] in wanted or (hist and m["name"].startswith("ratio_hist_")):
                    metrics.append({"key": planned.key, "label": label, "run_id": run["id"],
                                    "step": m["step"], "name": m["name"], "value": m["value"]})
        rows.append(row)
    total = len(plan)
    group.update(done=done, total=total,
                 progress=(done + partial) / total if total else 0.0)
    experiment = _run_or_none(store, group.get("run_id"))
    return {"group": group, "runs": rows, "metrics": metrics,
            "charts": [asdict(c) for c in charts], "summary": group.get("summary") or {},
            "experiment_run": experiment}


def run_report(store: Store, group_id: int, seconds: float | None = None) -> dict:
    """The CLI's JSON document: the group, its runs (id, key, status, varied, summary)."""
    view = group_view(store, group_id)
    group = {k: view["group"][k] for k in ("id", "name", "stage", "recipe", "status", "run_id",
                                           "done", "total")}
    group["summary"] = view["summary"]
    runs = [{"id": r["run_id"], "key": r["key"], "status": r["status"], "varied": r["varied"],
             "summary": r["summary"]} for r in view["runs"]]
    out = {"group": group, "runs": runs}
    if seconds is not None:
        out["seconds"] = round(seconds, 2)
    return out


def json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))

