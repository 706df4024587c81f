"""The settings schema: every stage's config dataclass is the single source of truth.

A field is declared once, with its metadata (`setting(...)`): bounds, step, basic or
advanced group, choices, and the i18n key of its label and help text
(`i18n/<lang>/settings.json`: "<name>" and "<name>_help"). From it derive:

- `validate()`   bounds, choices and types of every field, then the stage's own `check()`
                 rules; raises `ConfigError` naming the field (the job engine, the CLI
                 and the page forms all call it; pages never re-implement a rule);
- `from_dict()`  a config from JSON (stored runs, `--config`, `--set`): old field names
                 of runs already in users' databases are mapped (`RENAMED`), an unknown
                 name is refused with the nearest known one ("did you mean max_steps?");
- `describe()`   the rows `python -m engine train STAGE --help` prints and the form
                 renderer (ui/forms.py) draws.

The shared bases give one name per idea across stages:

    StageConfig        model                                   (every stage, light ones too)
    TrainConfig        + dataset, max_steps, learning_rate, batch_size, seed, max_grad_norm,
                         save_every, keep_checkpoints, lora     (every training stage)
    SupervisedConfig   + epochs, grad_accum, schedule, warmup_ratio, weight_decay,
                         max_length, group_by_length, eval_every (stages that fit a dataset)
    SamplingSettings   temperature, top_p, max_new_tokens      (declared once; a stage that
                                                                 samples mixes it in)

A subclass changes a default or a bound with `like("name", default, ...)`, which keeps
the rest of the metadata declared here.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar


BASIC, ADVANCED = "basic", "advanced"


@dataclass
class LoraSettings:
    """The LoRA adapter a training stage adds (peft.LoraConfig's r, lora_alpha, ...)."""
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: engine.inference.models.default_lora_targets
I18N = Path(__file__).resolve().parent.parent / "i18n"


class ConfigError(ValueError):
    """A setting that cannot be used; `field` names it (dotted for nested settings)."""

    def __init__(self, field_name: str | None, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}" if field_name else message)


@dataclass(frozen=True)
class Setting:
    """What a form, the CLI and validation need to know about one field."""
    min: float | None = None
    max: float | None = None
    step: float | None = None
    group: str = BASIC
    choices: tuple | None = None
    help: str | None = None          # i18n key of the help text (default "settings.<name>_help")
    label: str | None = None         # i18n key of the label (default "settings.<name>")
    widget: str | None = None        # "page": the page draws it itself; "hidden": never drawn
    format: str | None = None        # number format for the form ("%.1e" for rates)
    optional: bool = False           # None is a valid value (e.g. "no SFT run")


def setting(default: Any = MISSING, *, factory: Any = MISSING, **meta) -> Any:
    """A dataclass field with its metadata: `lr: float = setting(3e-4, min=0, ...)`."""
    kwargs = {"metadata": {"setting": Setting(**meta)}}
    if factory is not MISSING:
        kwargs["default_factory"] = factory
    else:
        kwargs["default"] = default
    return field(**kwargs)


def like(name: str, default: Any = MISSING, *, factory: Any = MISSING, **changes) -> Any:
    """Redeclare a field of a base class with another default (and bounds), keeping the
    metadata it was declared with."""
    for base in _BASES:
        for f in fields(base):
            if f.name == name:
                meta = dataclasses.replace(f.metadata["setting"], **changes)
                kwargs = {"metadata": {"setting": meta}}
                if factory is not MISSING:
                    kwargs["default_factory"] = factory
                else:
                    kwargs["default"] = default
                return field(**kwargs)
    raise KeyError(f"no base setting named {name!r}")


def meta_of(f: dataclasses.Field) -> Setting:
    return f.metadata.get("setting") or Setting()


# -- the bases ----------------------------------------------------------------------------
@dataclass
class StageConfig:
    """Every stage's config: the base model, and validation from the field metadata."""
    RENAMED: ClassVar[dict[str, str]] = {}   # old name -> new name, for stored configs

    model: str = setting("embedded", widget="page")

    def check(self) -> None:
        """Rules between fields (a stage overrides it); raise ConfigError naming a field."""

    def validate(self) -> "StageConfig":
        """Types, bounds and choices of every field (nested ones too), then `check()`."""
        _validate_fields(self, "")
        self.check()
        return self


@dataclass
class SamplingSettings:
    """How answers are sampled: declared once for every stage that samples."""
    temperature: float = setting(0.7, min=0.01, max=5.0, step=0.05)
    top_p: float = setting(1.0, min=0.01, max=1.0, step=0.05)
    max_new_tokens: int = setting(48, min=1, max=4096)


# "none", or the trackers a run reports to, as TRL and transformers name them
REPORT_TO = ("none", "tensorboard", "mlflow", "tensorboard,mlflow")
# the accelerate config files the project ships (configs/accelerate/<name>.yaml)
ACCELERATE_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "accelerate"
CHECKPOINTING = ("auto", "on", "off")
QUANTIZATIONS = ("none", "4bit", "8bit")


def check_quantization(quantization: str) -> None:
    """A quantised base needs a CUDA device and bitsandbytes: refused here, before anything
    loads, on a CPU or MPS device (ConfigError naming `quantization`)."""
    if quantization in (None, "none"):
        return
    from engine.inference.models import pick_device

    device = pick_device()
    if device.type != "cuda":
        raise ConfigError("quantization", f"{quantization} needs a CUDA GPU (bitsandbytes); "
                          f"this run's device is {device.type}: set quantization=none")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("quantization", f"{quantization} needs the bitsandbytes package: "
                          f"pip install bitsandbytes, or set quantization=none")


@dataclass
class TrainConfig(StageConfig):
    """What every training stage shares."""
    # the names runs stored before the schema used (SFT, reward and PPO each had their own)
    RENAMED: ClassVar[dict[str, str]] = {"lr": "learning_rate", "steps": "max_steps",
                                         "checkpoint_every": "save_every"}

    dataset: str = setting("", widget="page")
    max_steps: int = setting(0, min=0, max=10_000_000)
    # no upper bound: a learning rate that blows the run up is an experiment the lab shows
    # (the run fails at the first non-finite loss, naming the step)
    learning_rate: float = setting(3e-4, min=1e-9, step=1e-5, format="%.1e")
    batch_size: int = setting(8, min=1, max=4096)
    seed: int = setting(0, min=0, max=2**31 - 1, group=ADVANCED)
    max_grad_norm: float = setting(1.0, min=0.0, max=1e4, step=0.1, group=ADVANCED)
    save_every: int = setting(10, min=0, max=10_000_000, group=ADVANCED)
    keep_checkpoints: int = setting(2, min=0, max=1000, group=ADVANCED)
    lora: LoraSettings = setting(factory=LoraSettings, group=ADVANCED)
    # several processes (engine.runtime.launch) and experiment trackers (engine.runtime.trackers)
    processes: int = setting(1, min=1, max=1024)
    accelerate_config: str = setting("", group=ADVANCED)
    report_to: str = setting("none", choices=REPORT_TO, group=ADVANCED)
    tracker_experiment: str = setting("", group=ADVANCED)
    tracking_uri: str = setting("", group=ADVANCED)
    tracker_artifacts: bool = setting(False, group=ADVANCED)
    tracker_errors: str = setting("fail", choices=("fail", "warn"), group=ADVANCED)

    # memory (engine.memory): recompute each layer's activations in the backward pass instead
    # of keeping them ("auto": only when the estimate says the run would not fit without it)
    gradient_checkpointing: str = setting("auto", choices=CHECKPOINTING, group=ADVANCED)
    # the frozen base in 4 or 8 bits (QLoRA through bitsandbytes; CUDA only)
    quantization: str = setting("none", choices=QUANTIZATIONS, group=ADVANCED)

    def check(self) -> None:
        super().check()
        check_quantization(self.quantization)
        check_processes(self.processes)
        if self.accelerate_config:
            accelerate_config_path(self.accelerate_config)  # ConfigError when missing
            if self.processes < 2:
                raise ConfigError("accelerate_config", "an accelerate config file is used "
                                                       "by runs of 2 or more processes")


def max_processes() -> int:
    """Processes a run may use here: the GPUs on a GPU machine, else the CPU cores."""
    import os

    if _has_cuda():
        import torch

        return max(1, torch.cuda.device_count())
    try:
        return max(1, len(os.sched_getaffinity(0)))  # the cores this process may use
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_processes(processes: int) -> None:
    """At most one process per GPU (per CPU core without one). Inside a launch (WORLD_SIZE
    set) the launcher has decided already: nothing to check."""
    import os

    if processes <= 1 or int(os.environ.get("WORLD_SIZE") or 1) > 1:
        return
    most = max_processes()
    if processes > most:
        raise ConfigError("processes", f"{processes} processes, but this machine has {most} "
                                       f"{'GPU(s)' if _has_cuda() else 'CPU core(s)'}")


def _has_cuda() -> bool:
    from engine.inference.models import pick_device

    return pick_device().type == "cuda"


def accelerate_config_path(name: str) -> Path:
    """A shipped preset by name (configs/accelerate/<name>.yaml) or a file's path."""
    preset = ACCELERATE_CONFIGS / f"{name}.yaml"
    if preset.is_file():
        return preset
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml"))
    raise ConfigError("accelerate_config", f"{name!r} is neither a shipped config "
                                           f"({', '.join(shipped)}) nor a file")


SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class SupervisedConfig(TrainConfig):
    """Stages that fit a fixed dataset in epochs (SFT, reward, DPO)."""
    epochs: float = setting(1.0, min=0.0, max=1000.0, step=0.5)
    grad_accum: int = setting(1, min=1, max=1024, group=ADVANCED)
    schedule: str = setting("cosine", choices=SCHEDULES, group=ADVANCED)
    warmup_ratio: float = setting(0.1, min=0.0, max=0.9, step=0.05, group=ADVANCED)
    weight_decay: float = setting(0.0, min=0.0, max=1.0, step=0.01, group=ADVANCED)
    max_length: int = setting(256, min=8, max=65_536, step=32)
    group_by_length: bool = setting(True, group=ADVANCED)
    eval_every: int = setting(10, min=0, max=10_000_000, group=ADVANCED)

    def check(self) -> None:
        super().check()
        if self.max_steps <= 0 and not self.epochs > 0:
            raise ConfigError("max_steps", "set epochs > 0 or max_steps > 0")


@dataclass
class SourceMixSettings:
    """The source mix of a stage that trains on preference pairs (reward, DPO): the share
    of AI-labelled pairs among the training pairs (engine.data.sources.mix_sources)."""
    # None: every pair as it is; s in [0, 1]: AI pairs : others = s : 1 − s (seeded subsample)
    ai_share: float | None = setting(None, min=0.0, max=1.0, step=0.05, group=ADVANCED,
                                     optional=True)


_BASES = (StageConfig, SamplingSettings, TrainConfig, SupervisedConfig, SourceMixSettings)

# the settings of LoRA (engine.inference.models.LoraSettings): bounds for forms and validation
LORA_META = {
    "r": Setting(min=1, max=1024, group=ADVANCED),
    "alpha": Setting(min=1, max=4096, group=ADVANCED),
    "dropout": Setting(min=0.0, max=0.9, step=0.05, group=ADVANCED),
    "target_modules": Setting(group=ADVANCED, optional=True),
}


# -- validation -----------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _meta(cls: type, f: dataclasses.Field) -> Setting:
    if cls is LoraSettings:
        return LORA_META.get(f.name, Setting(group=ADVANCED))
    return meta_of(f)


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of `int`, `int | None`, `Optional[int]`."""
    args = typing.get_args(hint)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return hint, False


def _validate_fields(obj: Any, prefix: str) -> None:
    cls = type(obj)
    hints = _hints(cls)
    for f in fields(cls):
        name = prefix + f.name
        value = getattr(obj, f.name)
        meta = _meta(cls, f)
        hint, nullable = _base_type(hints.get(f.name))
        if is_dataclass(hint):
            if not isinstance(value, hint):
                raise ConfigError(name, f"expected settings of {hint.__name__}")
            _validate_fields(value, name + ".")
            continue
        if value is None:
            if nullable or meta.optional:
                continue
            raise ConfigError(name, "a value is required")
        _check_type(name, hint, value)
        if meta.choices is not None and value not in meta.choices:
            raise ConfigError(name, f"{value!r} is not one of {', '.join(map(str, meta.choices))}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(name, f"{value} is not a finite number")
            if meta.min is not None and value < meta.min:
                raise ConfigError(name, f"{number(value)} is below the minimum "
                                        f"{number(meta.min)}")
            if meta.max is not None and value > meta.max:
                raise ConfigError(name, f"{number(value)} is above the maximum "
                                        f"{number(meta.max)}")


def number(x: float) -> str:
    """3 for 3.0 and 10000000 for 1e7 (bounds read as typed), else the shortest form."""
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:g}"


def _check_type(name: str, hint: Any, value: Any) -> None:
    ok = True
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    elif typing.get_origin(hint) in (list, tuple) or hint in (list, tuple):
        ok = isinstance(value, (list, tuple))
    elif typing.get_origin(hint) is dict or hint is dict:
        ok = isinstance(value, dict)
    if not ok:
        kind = getattr(hint, "__name__", str(hint))
        raise ConfigError(name, f"expected {_KIND.get(kind, kind)}, got {value!r}")


_KIND = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text",
         "list": "a list", "dict": "an object"}


# -- from JSON ------------------------------------------------------------------------------
def renamed(cls: type) -> dict[str, str]:
    """Old name -> new name over the class and its bases (stored configs of older runs)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(getattr(klass, "RENAMED", None) or {})
    return out


def _coerce(hint: Any, value: Any) -> Any:
    """JSON numbers into the declared type where that loses nothing (3 -> 3.0; 3.0 -> 3)."""
    base, _ = _base_type(hint)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build a (possibly nested) config dataclass from JSON-like data.

    Old names (`RENAMED`) are mapped to today's; an unknown name is a ConfigError that
    names it and the nearest known one."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or None, f"expected an object, got {data!r}")
    data = dict(data)
    for old, new in renamed(cls).items():
        if old in data:
            value = data.pop(old)
            data.setdefault(new, value)
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}{near[0]}?" if near else \
                f"; known: {', '.join(sorted(known))}"
            raise ConfigError(prefix + key, f"unknown setting of {cls.__name__}{hint}")
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints.get(key)
        base, _ = _base_type(hint)
        if is_dataclass(base) and isinstance(value, dict):
            value = from_dict(base, value, prefix + key + ".")
        kwargs[key] = _coerce(hint, value)
    return cls(**kwargs)


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key=value` items (dotted keys for nested fields; values parsed as JSON when
    they can be, else taken as text)."""
    data = json.loads(json.dumps(data))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(None, f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return data


def build(cls: type, data: dict | None = None, overrides: list[str] | None = None):
    """A validated config of `cls` from JSON data and `--set` overrides."""
    cfg = from_dict(cls, apply_overrides(data or {}, overrides or []))
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


# -- describing -------------------------------------------------------------------------------
@dataclass
class FieldInfo:
    name: str            # dotted for nested settings ("lora.r")
    type: str            # int | float | bool | str | list | dict | any
    default: Any
    meta: Setting
    nullable: bool

    @property
    def key(self) -> str:
        return self.name.replace(".", "_")

    @property
    def label_key(self) -> str:
        return self.meta.label or f"settings.{self.key}"

    def help_keys(self, stage: str | None = None) -> list[str]:
        """The help's i18n keys, the stage's own wording first ("settings.ppo.batch_size_help"
        where a stage means something more precise by the shared name)."""
        if self.meta.help:
            return [self.meta.help]
        own = [f"settings.{stage}.{self.key}_help"] if stage else []
        return own + [f"settings.{self.key}_help"]


def _type_name(hint: Any) -> str:
    base = typing.get_origin(hint) or hint
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list",
            dict: "dict", tuple: "list"}.get(base, "any")


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[FieldInfo]:
    """Every setting of `cls` in declaration order (nested dataclasses flattened, with the
    defaults the outer class gives them)."""
    out: list[FieldInfo] = []
    hints = _hints(cls)
    for f in fields(cls):
        hint, nullable = _base_type(hints.get(f.name))
        if defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = f.default if f.default is not MISSING else (
                f.default_factory() if f.default_factory is not MISSING else None)
        if is_dataclass(hint):
            out.extend(describe(hint, prefix + f.name + ".", default))
            continue
        out.append(FieldInfo(prefix + f.name, _type_name(hint), default, _meta(cls, f), nullable))
    return out


def english(key: str) -> str | None:
    """An English catalogue entry (the CLI has no session language)."""
    ns, _, name = key.partition(".")
    path = I18N / "en" / f"{ns}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(name)
    except (OSError, ValueError):
        return None


def help_text(cls: type, stage: str | None = None) -> str:
    """The settings of a stage as `--help` prints them: name, type, default, bounds, help."""
    lines = []
    for info in describe(cls):
        if info.meta.widget == "hidden":
            continue
        bounds = []
        if info.meta.choices:
            bounds.append("one of " + "|".join(map(str, info.meta.choices)))
        if info.meta.min is not None or info.meta.max is not None:
            lo = "" if info.meta.min is None else number(info.meta.min)
            hi = "" if info.meta.max is None else number(info.meta.max)
            bounds.append(f"[{lo}, {hi}]")
        default = json.dumps(info.default, ensure_ascii=False)
        head = f"  {info.name} ({info.type}{', or null' if info.nullable else ''}) " \
               f"= {default}" + (f"  {' '.join(bounds)}" if bounds else "")
        lines.append(head)
        text = next((english(k) for k in info.help_keys(stage) if english(k)), None) \
            or english(info.label_key)
        if text:
            lines.append(f"      {text}")
    return "\n".join(lines)


def names(cls: type) -> list[str]:
    return [info.name for info in describe(cls)]
