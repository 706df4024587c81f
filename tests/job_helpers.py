"""Cancelling a real stage at a chosen step, without polling or sleeping: the stage runs
inline (engine.runtime.jobs.execute) and its cancel event is set when the step's metrics
are logged, as the Stop button sets it; the stage stops at its next cancel check."""
from __future__ import annotations

from typing import Any, Callable


def cancel_after_step(fn: Callable, step: int) -> Callable:
    """`fn(config, ctx)` whose cancel event is set once step `step` logged its metrics."""
    def run(config, ctx):
        log_metrics = ctx.metrics

        def metrics(at, values, *args, **kwargs):
            log_metrics(at, values, *args, **kwargs)
            if at == step:
                ctx.cancel_event.set()
        ctx.metrics = metrics
        return fn(config, ctx)
    return run


def run_cancelled_after(store, stage: str, config: Any, step: int) -> int:
    """A new run of `stage` with `config` (dict or dataclass), cancelled after `step`; its id.
    Its stored config is the one JobManager.submit stores, so `resume` continues it."""
    from engine.runtime import stages
    from engine.runtime.jobs import config_dict, execute

    spec = stages.get(stage)
    config = spec.make_config(config)
    rid = store.create_run(stage, config_dict(config), model=getattr(config, "model", None),
                           dataset=getattr(config, "dataset", None))
    status = execute(store, rid, config, cancel_after_step(spec.function(), step))
    assert status == "cancelled", store.get_run(rid)["error"]
    return rid


def registered_stages(**specs):
    """A module-scoped autouse fixture that registers stand-in stages (name=(config class,
    function, light?)) for the module's tests only, and removes them afterwards: a test
    module's stages never linger in the global registry for the modules after it."""
    import pytest

    @pytest.fixture(autouse=True, scope="module")
    def stand_in_stages():
        from engine.runtime import stages

        for name, (cls, fn, light) in specs.items():
            stages.register(name, cls, fn, light=light)
        yield
        for name in specs:
            stages._registry.pop(name, None)
    return stand_in_stages
