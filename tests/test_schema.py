"""The settings schema: one source for the CLI, the forms, validation and stored runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine import schema
from engine.runtime import stages
from engine.training.dpo import DPOConfig
from engine.training.grpo import GRPOConfig
from engine.training.ppo import PPOConfig
from engine.training.reward import RewardConfig
from engine.schema import ConfigError
from engine.training.sft import SFTConfig
from tests.conftest import ROOT

CONFIGS = {"sft": SFTConfig, "reward": RewardConfig, "ppo": PPOConfig, "grpo": GRPOConfig,
           "dpo": DPOConfig}


def test_one_name_per_idea_across_training_stages():
    shared = {"model", "dataset", "max_steps", "learning_rate", "batch_size", "seed",
              "save_every", "keep_checkpoints", "max_grad_norm", "lora.r", "lora.alpha"}
    for cls in CONFIGS.values():
        assert shared <= set(schema.names(cls)), cls.__name__
    for old in ("lr", "steps", "checkpoint_every"):
        assert all(old not in schema.names(cls) for cls in CONFIGS.values())
    # SFT and reward fit a dataset: they share the supervised settings too
    supervised = {"epochs", "grad_accum", "schedule", "warmup_ratio", "max_length", "eval_every"}
    assert supervised <= set(schema.names(SFTConfig)) & set(schema.names(RewardConfig))
    # the sampling settings are declared once and reused
    assert {"temperature", "top_p", "max_new_tokens"} <= set(schema.names(PPOConfig))


def test_defaults_are_valid_and_every_field_has_a_label_and_help_in_both_languages():
    from ui.i18n import catalogue

    for stage, cls in CONFIGS.items():
        cls().validate()
        for info in schema.describe(cls):
            for lang in ("en", "fr"):
                assert info.label_key in catalogue(lang), (lang, info.label_key)
                assert any(k in catalogue(lang) for k in info.help_keys(stage)), \
                    (lang, stage, info.name)


@pytest.mark.parametrize("stage, old, expected", [
    ("sft", {"checkpoint_every": 3, "learning_rate": 1e-3}, {"save_every": 3}),
    ("reward", {"lr": 5e-4, "save_every": 7, "epochs": 2}, {"learning_rate": 5e-4, "epochs": 2.0}),
    ("ppo", {"steps": 5, "lr": 1e-4, "checkpoint_every": 2},
     {"max_steps": 5, "learning_rate": 1e-4, "save_every": 2}),
])
def test_stored_configs_in_the_old_names_still_load(store, stage, old, expected):
    """A run stored before the schema (old field names in users' databases) loads, is
    resumable, and its config maps onto today's names."""
    from engine.runtime.jobs import JobManager

    rid = store.create_run(stage, old, status="interrupted")
    cfg = stages.get(stage).make_config(store.get_run(rid)["config"])
    for key, value in expected.items():
        assert getattr(cfg, key) == value
    assert isinstance(cfg.epochs if stage != "ppo" else cfg.max_steps, (int, float))
    # the job engine takes it back as it is: resume goes through the same mapping
    manager = JobManager(store)
    assert stages.get(stage).make_config(store.get_run(rid)["config"]) == cfg
    manager.shutdown()


def test_unknown_names_are_refused_with_the_nearest_known_one():
    with pytest.raises(ConfigError, match="did you mean max_steps"):
        schema.from_dict(PPOConfig, {"max_step": 3})
    with pytest.raises(ConfigError, match=r"did you mean lora\.alpha"):
        schema.from_dict(SFTConfig, {"lora": {"alpah": 3}})
    with pytest.raises(ConfigError) as info:
        schema.from_dict(RewardConfig, {"zzzz": 1})
    assert info.value.field == "zzzz" and "known:" in str(info.value)


def test_validation_names_the_field_and_the_rule():
    cases = [
        (SFTConfig(batch_size=0), "batch_size", "below the minimum 1"),
        (SFTConfig(schedule="steep"), "schedule", "not one of cosine, linear, constant"),
        (SFTConfig(max_steps=0, epochs=0.0), "max_steps", "epochs > 0"),
        (RewardConfig(learning_rate=float("nan")), "learning_rate", "not a finite number"),
        (PPOConfig(batch_size=6, minibatches=4), "minibatches", "multiple of minibatches"),
        (PPOConfig(temperature=0.0), "temperature", "below the minimum"),
        (PPOConfig(max_steps=0), "max_steps", "below the minimum 1"),
        (PPOConfig(builtin_reward="target_length", reward_params={"tgt": 3}), "reward_params",
         "unknown parameter"),
        (SFTConfig(max_steps="3"), "max_steps", "expected an integer"),
    ]
    for cfg, field, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            cfg.validate()
        assert info.value.field == field, (field, info.value)
    bad = SFTConfig()
    bad.lora.r = 0
    with pytest.raises(ConfigError, match="lora.r: 0 is below the minimum 1"):
        bad.validate()


def test_the_job_engine_refuses_a_bad_config_before_any_run_exists(store):
    from engine.runtime.jobs import JobManager, run_sync

    manager = JobManager(store)
    with pytest.raises(ConfigError, match="batch_size"):
        manager.submit("sft", {"batch_size": -1})
    with pytest.raises(ConfigError, match="did you mean"):
        run_sync(store, "ppo", {"max_step": 2})
    assert store.list_runs() == []
    manager.shutdown()


def test_json_numbers_take_the_declared_type():
    cfg = schema.build(SFTConfig, {"epochs": 3}, ["learning_rate=1", "max_steps=4.0",
                                                  "lora.target_modules=[\"q_proj\"]"])
    assert cfg.epochs == 3.0 and isinstance(cfg.epochs, float)
    assert cfg.learning_rate == 1.0 and cfg.max_steps == 4 and isinstance(cfg.max_steps, int)
    assert cfg.lora.target_modules == ["q_proj"]


def _cli(*args, home, timeout=60):
    env = dict(os.environ, RLHF_LAB_HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_help_lists_every_setting_with_default_bounds_and_help(tmp_path):
    out = _cli("train", "ppo", "--help", home=tmp_path)
    assert out.returncode == 0, out.stderr
    for info in schema.describe(PPOConfig):
        assert f"  {info.name} (" in out.stdout, info.name
    assert "max_steps (int) = 16  [1, 10000000]" in out.stdout
    assert "cliprange (float) = 0.2" in out.stdout
    assert "Answers sampled per step" in out.stdout  # the stage's own help text
    out = _cli("train", "ppo", "--set", "max_step=2", home=tmp_path)
    assert out.returncode == 2 and "did you mean max_steps?" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_trains_every_stage_on_an_empty_data_folder(tmp_path, models_home):
    """A newcomer's first commands: `train sft|reward|ppo --set max_steps=N` on an empty
    RLHF_LAB_HOME, the embedded model and the shipped samples (loaded on first open)."""
    home = tmp_path / "fresh"
    results = {}
    for stage, extra in (("sft", ["--set", "eval_max_rows=4", "--set", "eval_samples=0"]),
                         ("reward", ["--set", "max_eval_pairs=4", "--set", "normalize_samples=4",
                                     "--set", "batch_size=2"]),
                         ("ppo", ["--set", "batch_size=2", "--set", "minibatches=1",
                                  "--set", "max_new_tokens=8"])):
        out = _cli("train", stage, "--set", "max_steps=1", *extra, home=home, timeout=600)
        assert out.returncode == 0, (stage, out.stdout[-2000:], out.stderr[-3000:])
        results[stage] = json.loads(out.stdout)
        assert results[stage]["status"] == "succeeded"
    assert results["sft"]["steps"] == 1 and results["ppo"]["steps"] == 1
    from storage import Store

    store = Store(home / "lab.db")
    assert {d["name"] for d in store.list_datasets()} >= {"sample-sft", "sample-preferences"}
    assert [r["stage"] for r in store.list_runs()][::-1] == ["sft", "reward", "ppo"]
    store.close()
