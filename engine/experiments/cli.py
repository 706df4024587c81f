"""`python -m engine sweep STAGE --vary ...` and `python -m engine experiment RECIPE|list`:
run a group synchronously (like `train`: SIGTERM cancels it) and print one JSON document."""
from __future__ import annotations

import json
import time
from pathlib import Path

from engine.cli import print_json, store_of


def _english(key: str) -> str | None:
    from engine.schema import english

    return english(key)


def sentence_text(sentence: dict | None) -> str | None:
    """A summary's computed sentence ({"key", "params"}) in English (the CLI's language)."""
    if not sentence or not sentence.get("key"):
        return None
    text = _english(sentence["key"])
    if not text:
        return sentence["key"]
    params = dict(sentence.get("params") or {})
    if "metric" in params:   # a metric's name: its label
        params["metric"] = _english(f"metrics.{params['metric']}") or params["metric"]
    try:
        return text.format(**params)
    except (KeyError, IndexError, ValueError):
        return text


def _report(store, group_id: int, t0: float) -> int:
    from engine.experiments.runner import run_group_sync, run_report

    run = run_group_sync(store, group_id)
    if not run.get("main", True):  # another process of `accelerate launch`
        return 0
    out = run_report(store, group_id, time.perf_counter() - t0)
    sentence = (out["group"]["summary"] or {}).get("sentence")
    if sentence:
        out["sentence"] = sentence_text(sentence)
    if run.get("error"):
        out["error"] = run["error"].split("\n\n")[0]
    print_json(out)
    return 0 if out["group"]["status"] == "succeeded" else 1


def cmd_sweep(args) -> int:
    from engine.experiments.plan import parse_vary
    from engine.experiments.runner import create_sweep
    from engine.runtime import stages

    base = json.loads(Path(args.config).read_text()) if args.config else {}
    base = stages.apply_overrides(base, args.set)
    vary = parse_vary(args.vary, args.stage)   # a bad --vary stops here: nothing stored
    t0 = time.perf_counter()
    store = store_of(args)
    group_id = create_sweep(store, args.stage, base, vary, args.name)
    return _report(store, group_id, t0)


def cmd_experiment(args) -> int:
    from engine.experiments.catalogue import recipes
    from engine.experiments.plan import recipe_text_keys
    from engine.experiments.runner import create_recipe_group
    from engine.runtime import stages

    known = recipes()
    if args.recipe == "list":
        print_json([{"name": r.name,
                     "title": next(filter(None, map(_english, recipe_text_keys(r.name, "title"))),
                                   r.name),
                     "minutes": r.minutes, "device": r.device,
                     "runs": len(r.plan(r.make_settings())),
                     "settings": _settings(r)} for r in known.values()])
        return 0
    if args.recipe not in known:
        raise ValueError(f"unknown recipe {args.recipe!r}; known: "
                         f"{', '.join(sorted(known)) or 'none'}")
    settings = stages.apply_overrides({}, args.set)
    t0 = time.perf_counter()
    store = store_of(args)
    group_id = create_recipe_group(store, args.recipe, settings, args.name)
    return _report(store, group_id, t0)


def _settings(recipe) -> dict:
    from engine import schema

    return schema.to_dict(recipe.make_settings())


def register_cli(subparsers) -> None:
    from engine.runtime.stages import training_stages

    p = subparsers.add_parser(
        "sweep", help="run one training stage over one or two varied settings (a run group)")
    p.add_argument("stage", choices=training_stages())
    p.add_argument("--vary", action="append", default=[], required=True,
                   metavar="KEY=V1,V2,...",
                   help="a setting and its values (at most two --vary; 'inf' is the "
                        "setting's 'no limit' maximum, e.g. cliprange=0.05,0.2,inf)")
    p.add_argument("--config", help="JSON file with the base config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config field (dotted for nested, JSON values)")
    p.add_argument("--name")
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("experiment",
                              help="run an experiment recipe of the course, or `list` them")
    p.add_argument("recipe", help="a recipe's name, or 'list'")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the recipe (its size knobs)")
    p.add_argument("--name")
    p.set_defaults(func=cmd_experiment)
