"""Headless command line: `python -m engine <command> ...` (the same code the pages use).

Commands here: `runs list`, `model info`, `train <stage>`. Modules listed in
CLI_MODULES add their own commands through a `register_cli(subparsers)` function.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from engine.cli import print_json, store_of

CLI_MODULES = ["engine.data.commands", "engine.compare", "engine.export", "engine.experiments.cli"]


def cmd_runs_list(args) -> int:
    store = store_of(args)
    runs = store.list_runs(stage=args.stage, status=args.status)
    rows = [{k: r[k] for k in ("id", "stage", "name", "status", "model", "dataset", "created",
                               "started", "finished", "step", "total_steps", "summary")}
            for r in runs]
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['id']:>5}  {r['stage']:<12} {r['status']:<12} {r['name']}")
    return 0


def cmd_model_info(args) -> int:
    from engine.inference.models import load_base

    loaded = load_base(args.model)
    info = loaded.info()
    if args.json:
        print_json(info)
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


def train_help(stage: str | None) -> str:
    """`train STAGE --help`: every setting with its type, default, bounds and help."""
    from engine import schema
    from engine.runtime import stages

    names = stages.training_stages()
    head = ("usage: python -m engine train STAGE [--config FILE.json] [--set KEY=VALUE ...] "
            "[--name NAME] [--estimate]\n\nSTAGE: " + " | ".join(names) + "\n")
    if stage is None:
        return head + "\n`python -m engine train STAGE --help` lists the stage's settings.\n"
    cls = stages.get(stage).config_cls
    return (head + f"\nSettings of {stage} (--set NAME=VALUE; dotted names for nested ones, "
            f"values as JSON):\n" + schema.help_text(cls, stage) + "\n")


def cmd_train(args) -> int:
    from engine.runtime import stages
    from engine.runtime.jobs import run_sync

    if args.help or args.stage is None:
        print(train_help(args.stage), end="")
        return 0 if args.help else 2
    data = json.loads(Path(args.config).read_text()) if args.config else {}
    data = stages.apply_overrides(data, args.set)
    store = store_of(args)
    if args.estimate:  # the memory the run would need, nothing trained or stored
        from engine import memory

        cfg = stages.get(args.stage).make_config(data)
        print_json(memory.estimate(args.stage, cfg, store).to_json())
        return 0
    t0 = time.perf_counter()
    run = run_sync(store, args.stage, data, name=args.name, run_id=args.run_id,
                   resume=args.resume)
    if not run.get("main", True):  # another process of `accelerate launch`: main reports
        return 0
    out = {"run_id": run["id"], "status": run["status"], "seconds": round(time.perf_counter() - t0, 2),
           **run["summary"]}
    if run["error"]:
        out["error"] = run["error"].split("\n\n")[0]
    print_json(out)
    return 0 if run["status"] == "succeeded" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="RLHF Lab, headless")
    parser.add_argument("--db", help="database file (default: $RLHF_LAB_HOME/lab.db)")
    sub = parser.add_subparsers(dest="command", required=True)

    runs = sub.add_parser("runs", help="list runs").add_subparsers(dest="action", required=True)
    p = runs.add_parser("list", help="list every run")
    p.add_argument("--json", action="store_true")
    p.add_argument("--stage")
    p.add_argument("--status")
    p.set_defaults(func=cmd_runs_list)

    model = sub.add_parser("model", help="the base model").add_subparsers(dest="action",
                                                                           required=True)
    p = model.add_parser("info", help="load the model and report it")
    p.add_argument("--model", default="embedded",
                   help="'embedded', a local Hugging Face folder, or a hub id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)

    from engine.runtime.stages import training_stages

    p = sub.add_parser("train", help="run a training stage synchronously", add_help=False)
    p.add_argument("stage", nargs="?", choices=training_stages())
    p.add_argument("-h", "--help", action="store_true", help="the stage's settings")
    p.add_argument("--config", help="JSON file with the stage's config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (dotted for nested, JSON values)")
    p.add_argument("--name")
    # the processes a run of several processes launches (engine.runtime.launch) run the
    # run the job engine created: its id, and whether they continue it from a checkpoint
    p.add_argument("--run-id", type=int, help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--estimate", action="store_true",
                   help="print the run's memory estimate as JSON; train nothing")
    p.set_defaults(func=cmd_train)

    for name in CLI_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        if hasattr(module, "register_cli"):
            module.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback
        from engine.inference.models import ModelLoadError
        from storage import DatasetExists, NotFound

        if isinstance(exc, (ModelLoadError, NotFound, DatasetExists, ValueError,
                            FileNotFoundError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
