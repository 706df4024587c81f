"""`python -m engine data import|export|list|samples`."""
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
    from engine.feedback.cli import add_parser as add_ai_label

    add_ai_label(data)
