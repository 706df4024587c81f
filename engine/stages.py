"""The registry of job stages: name -> config dataclass and function `fn(config, ctx)`.

Stages are imported lazily so that listing runs or starting the app never loads torch
training code it does not need. Add a stage with one line in BUILTIN or with
`register()` (tests register tiny stages this way).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Callable

# name: (module, config class, function, light?)
BUILTIN: dict[str, tuple[str, str, str, bool]] = {
    "sft": ("engine.sft", "SFTConfig", "train_sft", False),
    "reward": ("engine.reward", "RewardConfig", "train_reward", False),
    "ppo": ("engine.ppo", "PPOConfig", "train_ppo", False),
    "pair_sample": ("engine.collect", "PairSampleConfig", "sample_pair", True),
    "compare": ("engine.compare", "CompareConfig", "run_compare", True),
    "export": ("engine.export", "ExportConfig", "run_export", True),
}


@dataclass
class StageSpec:
    name: str
    config_cls: type
    fn: Callable | None = None
    light: bool = False
    module: str | None = None
    fn_name: str | None = None

    def function(self) -> Callable:
        if self.fn is None:
            self.fn = getattr(importlib.import_module(self.module), self.fn_name)
        return self.fn

    def make_config(self, config: Any = None):
        if config is None:
            return self.config_cls()
        if isinstance(config, self.config_cls):
            return config
        return from_dict(self.config_cls, dict(config))


_registry: dict[str, StageSpec] = {}


def register(name: str, config_cls: type, fn: Callable, light: bool = False) -> None:
    _registry[name] = StageSpec(name, config_cls, fn, light)


def get(name: str) -> StageSpec:
    if name in _registry:
        return _registry[name]
    if name not in BUILTIN:
        raise KeyError(f"unknown stage {name!r}; known: {sorted(set(BUILTIN) | set(_registry))}")
    module, cls_name, fn_name, light = BUILTIN[name]
    cls = getattr(importlib.import_module(module), cls_name)
    spec = StageSpec(name, cls, None, light, module, fn_name)
    _registry[name] = spec
    return spec


# -- configs from JSON, with --set overrides ----------------------------------------------
def from_dict(cls: type, data: dict) -> Any:
    """Build a (possibly nested) config dataclass; unknown keys are an error that names them."""
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; "
                         f"known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints.get(key)
        if is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        kwargs[key] = value
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key=value` (dotted keys for nested fields; values parsed as JSON when they can be)."""
    data = json.loads(json.dumps(data))
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
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


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)
