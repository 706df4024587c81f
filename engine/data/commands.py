"""`python -m engine data import|export|list|samples|sources|agreement`."""
from __future__ import annotations

from engine.cli import print_json, store_of
from engine.data.curation import ensure_sample_datasets, export_jsonl
from engine.data.formats import FORMATS
from engine.data.importer import import_file, list_datasets
from engine.data.records import DEFAULT_MAX_CHARS, KINDS


def cmd_import(args) -> int:
    store = store_of(args)
    mode = "overwrite" if args.overwrite else "append" if args.append else "new"
    report = import_file(store, args.file, kind=args.kind, fmt=args.format, dataset=args.dataset,
                         mode=mode, max_chars=args.max_chars, eval_fraction=args.eval_fraction)
    out = report.to_dict()
    out["rejected"] = [{k: r[k] for k in ("line", "item", "reason") if k in r}
                       for r in report.rejected]
    print_json(out)
    return 0 if report.imported else 1


def cmd_export(args) -> int:
    store = store_of(args)
    n = export_jsonl(store, args.name, args.out, split=args.split, extra=args.with_meta)
    print_json({"dataset": args.name, "rows": n, "out": str(args.out)})
    return 0


def cmd_list(args) -> int:
    rows = [{k: d[k] for k in ("id", "name", "kind", "rows", "eval_fraction", "description")}
            for d in list_datasets(store_of(args))]
    if args.json:
        print_json(rows)
    else:
        for d in rows:
            print(f"{d['name']:<30} {d['kind']:<11} {d['rows']:>7} rows")
    return 0


def cmd_samples(args) -> int:
    print_json({"created": ensure_sample_datasets(store_of(args))})
    return 0


def cmd_sources(args) -> int:
    from engine.data.sources import pair_sources

    store = store_of(args)
    print_json({"dataset": args.name, "split": args.split,
                "sources": pair_sources(store, args.name, args.split)})
    return 0


def cmd_agreement(args) -> int:
    from engine.feedback.agreement import agreement

    res = agreement(store_of(args), args.name, reference=args.reference,
                    votes=not args.no_votes, ab_votes=not args.no_ab_votes, ties=args.ties)
    print_json(res)
    return 0


def register_cli(subparsers) -> None:
    """`data import|export|list|samples` for `python -m engine`."""
    data = subparsers.add_parser("data", help="datasets: import, export, list").add_subparsers(
        dest="action", required=True)
    p = data.add_parser("import", help="import a JSONL, JSON, CSV or Parquet file (plain or .gz)")
    p.add_argument("file")
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--format", choices=FORMATS, default="auto")
    p.add_argument("--dataset", help="dataset name (default: the file's name)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    group.add_argument("--append", action="store_true", help="add to an existing dataset")
    p.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                   help="reject rows with a text longer than this")
    p.add_argument("--eval-fraction", type=float, default=None)
    p.set_defaults(func=cmd_import)
    p = data.add_parser("export", help="write a dataset as TRL JSONL")
    p.add_argument("name")
    p.add_argument("--out", required=True)
    p.add_argument("--split", choices=("train", "eval"))
    p.add_argument("--with-meta", action="store_true", help="add each row's split and meta")
    p.set_defaults(func=cmd_export)
    p = data.add_parser("list", help="list datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = data.add_parser("samples", help="load the shipped sample datasets if absent")
    p.set_defaults(func=cmd_samples)
    p = data.add_parser("sources", help="rows per source: human vote, AI, imported, sample...")
    p.add_argument("name")
    p.add_argument("--split", choices=("train", "eval"))
    p.set_defaults(func=cmd_sources)
    p = data.add_parser("agreement", help="AI labels of a dataset against people's on the "
                                          "same pairs: percent, Cohen's kappa with its CI")
    p.add_argument("name", help="the AI-labelled preference dataset")
    p.add_argument("--reference", help="a preference dataset whose own pairs count as "
                                       "human labels too")
    p.add_argument("--ties", choices=("category", "drop"), default="category")
    p.add_argument("--no-votes", action="store_true", help="leave out the app's votes")
    p.add_argument("--no-ab-votes", action="store_true", help="leave out the blind A/B votes")
    p.set_defaults(func=cmd_agreement)
    from engine.feedback.cli import add_parser as add_ai_label

    add_ai_label(data)
