"""What a run group is made of: planned runs, charts, recipes, and sweeps expanded from a
base config and one or two varied fields.

A group (storage table `run_groups`) is a list of `PlannedRun`s run one after another by
the `experiment` stage (engine.experiments.runner). A planned run's config may point at an
earlier run of the same plan with `ref("key")` ({"$run": "key"}): the runner replaces it
with that run's id just before it runs. A `Recipe` is a named plan from the course (the
recipes themselves live in engine/experiments/recipes.py and call `register`;
engine/experiments/catalogue.py lists them); a sweep is
the plan `expand_sweep` makes from one stage's base config.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from engine import schema
from engine.schema import ConfigError

MAX_VARIED = 2          # fields one sweep varies
INF_WORDS = ("inf", "+inf", "∞", "infinity")


@dataclass
class PlannedRun:
    key: str             # unique in the group, e.g. "rm_proxy", "ppo_eps_0.2"
    stage: str           # a registered stage name (sft, reward, ppo, dpo, grpo, best_of_n, ...)
    config: dict         # JSON-able; ref("key") anywhere inside becomes that run's id
    label: str = ""      # legend label in charts (default: the key)
    varied: dict = field(default_factory=dict)  # the varied values, for the summary table

    def to_dict(self) -> dict:
        return {"key": self.key, "stage": self.stage, "config": self.config,
                "label": self.label or self.key, "varied": dict(self.varied)}

    @classmethod
    def from_dict(cls, data: dict) -> "PlannedRun":
        return cls(data["key"], data["stage"], dict(data.get("config") or {}),
                   data.get("label") or "", dict(data.get("varied") or {}))


def ref(key: str) -> dict:
    """A placeholder for the id of the planned run `key` (resolved when the run starts)."""
    return {"$run": key}


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"$run"}


def refs_of(config: Any) -> list[str]:
    """The keys a config refers to, in order of appearance."""
    out: list[str] = []
    if is_ref(config):
        out.append(str(config["$run"]))
    elif isinstance(config, dict):
        for value in config.values():
            out.extend(k for k in refs_of(value) if k not in out)
    elif isinstance(config, (list, tuple)):
        for value in config:
            out.extend(k for k in refs_of(value) if k not in out)
    return out


def resolve_refs(config: Any, ids: dict[str, int]) -> Any:
    """A copy of `config` with every ref replaced by the run id in `ids` (KeyError if missing)."""
    if is_ref(config):
        return int(ids[str(config["$run"])])
    if isinstance(config, dict):
        return {k: resolve_refs(v, ids) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [resolve_refs(v, ids) for v in config]
    return config


@dataclass
class Chart:
    title_key: str               # i18n key of the chart title
    metrics: list[str]           # metric names logged by the runs (one line per run x metric)
    x: str = "step"              # "step" or another metric's name logged at the same step
    x_transform: str = ""        # "" or "sqrt"
    runs: list[str] | None = None   # plan keys to draw; None: every run logging the metrics
    kind: str = "line"           # "line", or "hist": ratio_hist_NN bins at each run's last step


@dataclass
class Recipe:
    name: str                    # "overoptimization", "clip_epsilon", "kl_penalty", ...
    settings_cls: type           # a schema dataclass of the recipe's size knobs
    plan: Callable[[Any], list[PlannedRun]]            # settings -> planned runs, in order
    charts: list[Chart]
    summarize: Callable[[Any, dict, dict[str, dict]], dict]
    # (store, group, runs by key) -> {"table": [row dicts], "sentence": {"key", "params"}}
    formula: str = ""            # name of an equation in objectives.LATEX (the recipe card)
    minutes: float = 10          # expected minutes with the embedded model on the device:
    device: str = "cpu"          # "cpu" (a 2-core CPU) or "gpu" (a preset sized for one GPU)

    def make_settings(self, settings: Any = None):
        """The recipe's settings from None (defaults), an instance or JSON-like data,
        validated like any stage config (ConfigError names the field)."""
        if settings is None:
            settings = self.settings_cls()
        elif not isinstance(settings, self.settings_cls):
            settings = schema.from_dict(self.settings_cls, dict(settings))
        if hasattr(settings, "validate"):
            settings.validate()
        return settings


RECIPES: dict[str, Recipe] = {}
# where a recipe's title and text ("title", "text") are looked up, first found wins
RECIPE_TEXT_KEYS = ("experiments.recipe.{name}.{part}", "recipes.{name}.{part}")


def recipe_text_keys(name: str, part: str) -> list[str]:
    return [k.format(name=name, part=part) for k in RECIPE_TEXT_KEYS]


def register(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


# -- sweeps -----------------------------------------------------------------------------------
def _config_cls(stage: Any) -> type:
    from engine.runtime import stages

    if isinstance(stage, str):
        return stages.get(stage).config_cls
    if hasattr(stage, "config_cls"):
        return stage.config_cls
    return stage


def _field(cls: type, name: str) -> schema.FieldInfo:
    """The schema row of a (dotted) field; ConfigError with the nearest name otherwise."""
    infos = {info.name: info for info in schema.describe(cls)}
    if name in infos:
        return infos[name]
    import difflib

    near = difflib.get_close_matches(name, list(infos), n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]}?" if near else ""
    raise ConfigError(name, f"unknown setting of {cls.__name__}{hint}")


def _parse_value(raw: str, info: schema.FieldInfo) -> Any:
    text = raw.strip()
    if text.lower() in INF_WORDS:
        if info.meta.max is not None and info.meta.max >= 1e6:
            return float(info.meta.max) if info.type == "float" else int(info.meta.max)
        bound = "no maximum" if info.meta.max is None else \
            f"the maximum is {schema.number(info.meta.max)}"
        raise ConfigError(info.name, f"{text} cannot be used: {bound}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    if info.type == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if info.type == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def parse_vary(items: list[str], stage: Any) -> dict[str, list]:
    """`["cliprange=0.05,0.2,inf", "beta=0,0.05"]` -> {"cliprange": [0.05, 0.2, 1e6], ...}.

    Values are JSON where they parse, else text; "inf" (or "∞") is the field's schema
    maximum when that maximum is at least 1e6 (the stages' "no clip" value)."""
    cls = _config_cls(stage)
    out: dict[str, list] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(None, f"--vary {item!r}: expected name=value1,value2,...")
        name, raw = item.split("=", 1)
        name = name.strip()
        info = _field(cls, name)
        if name in out:
            raise ConfigError(name, "varied twice")
        values = [_parse_value(v, info) for v in raw.split(",") if v.strip()]
        if not values:
            raise ConfigError(name, "no values to vary over")
        out[name] = values
    return out


def _set(data: dict, dotted: str, value: Any) -> None:
    target = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def value_text(value: Any) -> str:
    """A varied value as a key or label shows it (1e6 of a "no clip" bound reads inf)."""
    if isinstance(value, float):
        if value >= 1e6 or math.isinf(value):
            return "inf"
        return schema.number(value) if value.is_integer() else f"{value:g}"
    return str(value)


def expand_sweep(stage: str, base: dict, vary: dict[str, list]) -> list[PlannedRun]:
    """The cartesian product of one or two varied fields over `base` (a config of `stage`),
    every config validated before anything is stored: an unknown field (with the nearest
    name) or a value out of bounds raises ConfigError naming the field and the value."""
    from engine.runtime import stages

    spec = stages.get(stage)
    if not vary:
        raise ConfigError(None, "a sweep varies at least one field")
    if len(vary) > MAX_VARIED:
        raise ConfigError(", ".join(vary), f"a sweep varies at most {MAX_VARIED} fields, "
                                           f"not {len(vary)}")
    for name, values in vary.items():
        _field(spec.config_cls, name)
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(name, "no values to vary over")
        if len(set(map(json.dumps, values))) != len(values):
            raise ConfigError(name, "a value is listed twice")
    # the full config first: a varied nested field (lora.r) keeps the stage's own nested
    # defaults (PPO's LoRA dropout 0) instead of the nested class's
    base = schema.to_dict(spec.make_config(dict(base or {})))
    planned: list[PlannedRun] = []
    names = list(vary)
    for combo in itertools.product(*(vary[n] for n in names)):
        data = json.loads(json.dumps(base))
        varied = dict(zip(names, combo))
        for name, value in varied.items():
            _set(data, name, value)
        try:
            config = spec.make_config(data)
        except ConfigError as exc:
            shown = ", ".join(f"{n}={value_text(v)}" for n, v in varied.items())
            raise ConfigError(exc.field, f"{exc.args[0].split(': ', 1)[-1]} (in the run "
                                         f"{shown})") from None
        key = "_".join([stage] + [f"{n}_{value_text(v)}" for n, v in varied.items()])
        label = ", ".join(f"{n}={value_text(v)}" for n, v in varied.items())
        planned.append(PlannedRun(key, stage, schema.to_dict(config), label, varied))
    return planned
