"""`python -m engine data ai-label ...`: the ai_feedback job, headless (run_sync), one JSON
document out: the run, pairs made, rows skipped with their reasons, seconds."""
from __future__ import annotations

import time

from engine.cli import print_json, store_of


def cmd_ai_label(args) -> int:
    from engine.runtime import stages
    from engine.runtime.jobs import run_sync

    data: dict = {"mode": args.mode, "dataset": args.dataset}
    for key in ("prompts", "constitution", "limit", "judge_url", "judge_model"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    if args.judge is not None:
        if str(args.judge).isdigit():
            data["judge_run"] = int(args.judge)
        else:
            data["judge"] = args.judge
    data = stages.apply_overrides(data, args.set)
    store = store_of(args)
    t0 = time.perf_counter()
    run = run_sync(store, "ai_feedback", data, name=args.name)
    summary = run.get("summary") or {}
    out = {"run_id": run["id"], "status": run["status"],
           "pairs_made": summary.get("pairs_made", 0), **summary,
           "seconds": round(time.perf_counter() - t0, 2)}
    out.setdefault("skipped", [])
    if run.get("error"):
        out["error"] = run["error"].split("\n\n")[0]
    print_json(out)
    return 0 if run["status"] == "succeeded" else 1


def add_parser(data_subparsers) -> None:
    """Add `ai-label` to the `data` command's subparsers."""
    p = data_subparsers.add_parser(
        "ai-label", help="AI feedback: critique-and-revise pairs or AI preference labels")
    p.add_argument("--mode", choices=("critique", "compare"), required=True)
    p.add_argument("--prompts", help="SFT or preference dataset of prompts (default: sample-sft)")
    p.add_argument("--constitution", help="constitution name (default: helpful-safe-en)")
    p.add_argument("--limit", type=int, help="how many prompts (default: 16)")
    p.add_argument("--dataset", required=True, help="the preference dataset to add pairs to")
    p.add_argument("--judge", help="a run id (its adapter judges) or a model folder/hub id "
                                   "(default: the embedded model)")
    p.add_argument("--judge-url", help="an OpenAI-compatible base URL, e.g. "
                                       "http://127.0.0.1:8080/v1")
    p.add_argument("--judge-model", help="the endpoint's model name")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other setting of the ai_feedback stage (JSON values)")
    p.add_argument("--name", help="the run's name")
    p.set_defaults(func=cmd_ai_label)
