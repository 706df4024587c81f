"""Draw a recipe group's charts from its stored metrics into one PNG (docs/EXPERIMENTS.md).

    .venv/bin/python docs/experiments/render.py --db $RLHF_LAB_HOME/lab.db [--group ID ...]
        [--out docs/experiments]

The charts are the recipe's own (engine.experiments.recipes: the metrics, x axis, √ and
histograms the Experiments page draws), read through runner.group_view like the page; one
file per group, named after its recipe. Titles and sentences in English.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def render(store, group_id: int, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.experiments.cli import sentence_text
    from engine.experiments.plan import Chart
    from engine.experiments.runner import group_view
    from engine.training.ppo import RATIO_HIST_EDGES
    from ui.i18n import catalogue

    en = catalogue("en")
    view = group_view(store, group_id)
    group, charts = view["group"], [Chart(**c) for c in view["charts"]]
    cols = 2 if len(charts) > 1 else 1
    rows = math.ceil(len(charts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.3 * rows), squeeze=False)
    metrics = view["metrics"]

    def label(name: str) -> str:
        return en.get(f"metrics.{name}", name)

    for ax, chart in zip(axes.flat, charts):
        ax.set_title(en.get(chart.title_key, chart.title_key), fontsize=9)
        rows_ = [m for m in metrics if chart.runs is None or m["key"] in chart.runs]
        runs = list(dict.fromkeys(m["label"] for m in rows_))
        if chart.kind == "hist":
            width = 0.8 / max(1, len(runs))
            for i, run in enumerate(runs):
                mine = [m for m in rows_ if m["label"] == run
                        and m["name"].startswith("ratio_hist_")]
                if not mine:
                    continue
                last = max(m["step"] for m in mine)
                counts = {int(m["name"][-2:]): m["value"] for m in mine if m["step"] == last}
                total = max(1.0, sum(counts.values()))
                xs = sorted(counts)
                ax.bar([x + i * width for x in xs], [counts[x] / total for x in xs],
                       width=width, label=run)
            ticks = list(range(0, len(RATIO_HIST_EDGES) - 1, 4))
            ax.set_xticks([t + 0.4 for t in ticks])
            ax.set_xticklabels([f"{RATIO_HIST_EDGES[t]:.2f}" for t in ticks], fontsize=7)
            ax.set_xlabel("r = π_θ / π_old (bin start)", fontsize=8)
            ax.set_ylabel("share of tokens", fontsize=8)
        else:
            for run in runs:
                mine = [m for m in rows_ if m["label"] == run]
                steps: dict[int, dict[str, float]] = {}
                for m in mine:
                    steps.setdefault(m["step"], {})[m["name"]] = m["value"]
                for metric in chart.metrics:
                    pts = sorted((step if chart.x == "step" else v.get(chart.x), v[metric], step)
                                 for step, v in steps.items()
                                 if metric in v and (chart.x == "step" or chart.x in v))
                    pts.sort(key=lambda p: p[2])
                    if not pts:
                        continue
                    xs = [math.sqrt(max(0.0, p[0])) if chart.x_transform == "sqrt" else p[0]
                          for p in pts]
                    name = run if len(chart.metrics) == 1 else f"{run} · {label(metric)}"
                    ax.plot(xs, [p[1] for p in pts], marker="o", markersize=3, label=name)
            x_title = "step" if chart.x == "step" else label(chart.x)
            ax.set_xlabel(("√ " if chart.x_transform == "sqrt" else "") + x_title, fontsize=8)
            if len(chart.metrics) == 1:
                ax.set_ylabel(label(chart.metrics[0]), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(charts):]:
        ax.axis("off")
    title = en.get(f"recipes.{group['recipe']}.title", group["name"])
    fig.suptitle(f"{title} (group #{group['id']})", fontsize=11)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{group['recipe'] or 'group'}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    sentence = sentence_text((view["summary"] or {}).get("sentence"))
    print(f"{path}: {sentence}")
    return path


def main() -> int:
    from storage import Store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--group", type=int, action="append")
    parser.add_argument("--out", default=str(ROOT / "docs" / "experiments"))
    args = parser.parse_args()
    store = Store(args.db)
    ids = args.group or [g["id"] for g in store.list_groups() if g.get("recipe")]
    for gid in ids:
        render(store, gid, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
