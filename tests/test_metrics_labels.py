"""Metric names in the interface (issue 19, items 9 and 13): every metric the engine logs
has a label in both languages (i18n/<lang>/metrics.json), charts name their series by it,
eval_ and short series are never smoothed, and the Runs page's overlay pre-selects only
finished runs with a curve to compare."""
from __future__ import annotations

import ast
import json
import re
import time

import pyarrow as pa
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT

ENGINE = ROOT / "engine"
PATTERN = re.compile(r"ratio_hist_\d+")  # one numbered family, one catalogue entry


class _Collector:
    """The names the engine logs: the keys of every dict passed to `ctx.metrics(step, d)`,
    following a variable (in its function, then the enclosing ones) to the dicts it is built
    from: literals, `**spread`, `.update()`, `d[key] = ...`, comprehensions over another
    dict or a tuple of names, and the dicts an engine function returns. An f-string key
    over an unknown set (`f"ratio_hist_{k:02d}"`) stands for its family: prefix + "*"."""

    def __init__(self, paths):
        self.built: dict[tuple, list] = {}   # (scope, variable) -> expressions adding keys
        self.returns: dict[str, list] = {}   # function name -> [(scopes, returned expr)]
        self.calls: list[tuple] = []         # (path, scopes, dict argument of ctx.metrics)
        for path in paths:
            self._visit(ast.parse(path.read_text(encoding="utf-8")), (0,), path)

    def _visit(self, node, scopes, path) -> None:
        def add(name, *exprs):
            self.built.setdefault((scopes[0], name), []).extend(exprs)

        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scopes = (id(node), *scopes)
            for sub in ast.walk(node):
                if isinstance(sub, ast.Return) and sub.value is not None:
                    self.returns.setdefault(node.name, []).append((scopes, sub.value))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            for target in getattr(node, "targets", None) or [node.target]:
                if isinstance(target, ast.Name):
                    add(target.id, node.value)
                elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                    add(target.value.id, target.slice)
                elif isinstance(target, ast.Tuple):  # metrics, rows = trainer.step(step)
                    for i, elt in enumerate(target.elts):
                        if isinstance(elt, ast.Name):
                            add(elt.id, ast.Subscript(node.value, ast.Constant(i)))
        elif isinstance(node, (ast.For, ast.comprehension)):
            target = node.target.elts[0] if isinstance(node.target, ast.Tuple) else node.target
            if isinstance(target, ast.Name):
                add(target.id, node.iter)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if node.func.attr == "update" and isinstance(owner, ast.Name):
                add(owner.id, *node.args,
                    *(ast.Constant(k.arg) if k.arg else k.value for k in node.keywords))
            elif (node.func.attr == "metrics" and len(node.args) >= 2
                  and isinstance(owner, ast.Name) and owner.id == "ctx"):
                self.calls.append((path, scopes, node.args[1]))
        for child in ast.iter_child_nodes(node):
            self._visit(child, scopes, path)

    def keys(self, expr, scopes, seen=frozenset()) -> set[str]:
        def each(exprs, inner=scopes, more=seen):
            return set().union(*(self.keys(e, inner, more) for e in exprs))

        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        if isinstance(expr, ast.JoinedStr):
            return self._fstring(expr, None)
        if isinstance(expr, ast.BoolOp):
            return each(expr.values)
        if isinstance(expr, ast.Name):
            for scope in scopes:  # the innermost function that binds the name
                found = self.built.get((scope, expr.id))
                if found:
                    key = (scope, expr.id)
                    return set() if key in seen else each(found, more=seen | {key})
            return set()
        if isinstance(expr, ast.Call):
            func = expr.func
            if isinstance(func, ast.Attribute) and func.attr in ("items", "keys"):
                return self.keys(func.value, scopes, seen)  # d.items() -> the keys of d
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name and name not in seen:
                return set().union(*(self.keys(e, inner, seen | {name})
                                     for inner, e in self.returns.get(name, [])))
            return set()
        if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Call) \
                and isinstance(expr.slice, ast.Constant):  # one item of a returned tuple
            func = expr.value.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            return set().union(*(self.keys(e.elts[expr.slice.value], inner, seen | {name})
                                 for inner, e in self.returns.get(name, [])
                                 if isinstance(e, ast.Tuple) and name not in seen))
        if isinstance(expr, (ast.Tuple, ast.List)):
            return each(expr.elts)
        if isinstance(expr, ast.Dict):
            return each([v if k is None else k for k, v in zip(expr.keys, expr.values)])
        if isinstance(expr, ast.DictComp):
            gen = expr.generators[0]
            target = gen.target.elts[0] if isinstance(gen.target, ast.Tuple) else gen.target
            source = self.keys(gen.iter, scopes, seen)
            if isinstance(expr.key, ast.Name) and expr.key.id == getattr(target, "id", None):
                return source
            if isinstance(expr.key, ast.JoinedStr):
                return self._fstring(expr.key, (getattr(target, "id", None), source))
            return self.keys(expr.key, scopes, seen)
        return set()

    @staticmethod
    def _fstring(expr, loop) -> set[str]:
        """f"eval_{k}" over known keys -> eval_<each>; over unknown ones -> "eval_*"."""
        parts = expr.values
        head = parts[0].value if isinstance(parts[0], ast.Constant) else ""
        var = next((p.value for p in parts if isinstance(p, ast.FormattedValue)), None)
        if loop and isinstance(var, ast.Name) and var.id == loop[0] and loop[1] \
                and len(parts) == 2 and not any(k.endswith("*") for k in loop[1]):
            return {head + k for k in loop[1]}
        return {head + "*"}

    def logged(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for path, scopes, arg in self.calls:
            for name in sorted(self.keys(arg, scopes)):
                out.setdefault(name, str(path.relative_to(ROOT)))
        return out


def logged_metric_names() -> dict[str, str]:
    """Every metric name the engine logs -> the module that logs it."""
    return _Collector(sorted(ENGINE.rglob("*.py"))).logged()


def _catalogue_of(lang: str, ns: str) -> dict[str, str]:
    return json.loads((ROOT / "i18n" / lang / f"{ns}.json").read_text(encoding="utf-8"))


def _catalogue(lang: str) -> dict[str, str]:
    return json.loads((ROOT / "i18n" / lang / "metrics.json").read_text(encoding="utf-8"))


def test_the_collector_finds_what_each_stage_logs():
    names = logged_metric_names()
    # one per kind of call: a dict literal (SFT), a dict built then updated (reward),
    # a variable built from another function's dict, comprehensions and an f-string (PPO)
    for name in ("train_loss", "eval_loss", "tokens_per_s", "reward_chosen", "lr",
                 "eval_margin", "non_score_reward", "advantage_std_raw", "time_generate",
                 "clipfrac", "ratio_max", "value_clipfrac", "ratio_hist_*"):
        assert name in names, name


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_every_logged_metric_has_a_label(lang):
    from ui.common import metric_label

    cat = _catalogue(lang)
    missing = []
    for name, where in sorted(logged_metric_names().items()):
        if name.endswith("*"):  # a family: one pattern entry, a label per member
            a, b = metric_label(name[:-1] + "03", lang), metric_label(name[:-1] + "04", lang)
            ok = a != name[:-1] + "03" and a != b
        else:
            ok = name in cat and cat[name].strip() and cat[name] != name
        if not ok:
            missing.append(f"{name} ({where})")
    assert not missing, f"metrics without a label in i18n/{lang}/metrics.json:\n" + \
        "\n".join(missing)


def test_labels_differ_by_language_and_unknown_metrics_keep_their_name():
    from ui.common import metric_label

    assert metric_label("eval_loss", "en") != metric_label("eval_loss", "fr")
    assert metric_label("non_score_reward", "fr") != "non_score_reward"
    assert metric_label("ratio_hist_07", "fr") != metric_label("ratio_hist_08", "fr")
    assert metric_label("brand_new_stage_metric", "fr") == "brand_new_stage_metric"
    assert metric_label("ratio_hist_x", "en") == "ratio_hist_x"  # not the pattern
    assert metric_label("reward_target_length", "fr") == "Récompense : " + _catalogue_of("fr", "ppo")[
        "rw_target_length"]  # GRPO's curve of one reward function, by that function's name


# -- charts ------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def fresh_handles():
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def _walk(node):
    for child in getattr(node, "children", {}).values():
        yield child
        yield from _walk(child)


def charts(at) -> list[tuple[dict, object]]:
    """(spec, data) of every Vega-Lite chart on the page."""
    out = []
    for el in _walk(at.main):
        if getattr(el, "type", None) == "vega_lite_chart":
            frames = [pa.ipc.open_stream(ds.data.data).read_all().to_pandas()
                      for ds in el.proto.datasets]
            out.append((json.loads(el.proto.spec), frames[0] if frames else None))
    return out


def _chart_script(frame_code: str, lang: str = "en", **kwargs) -> AppTest:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    script = f"""
import pandas as pd
import streamlit as st
from ui.common import line_chart
st.session_state["lang"] = {lang!r}
df = {frame_code}
line_chart(df, "title", {args})
"""
    return AppTest.from_string(script, default_timeout=60)


def _frame(name: str, values, run: str = "#1") -> str:
    rows = [{"run": run, "step": i, "name": name, "value": v, "time": 0.0}
            for i, v in enumerate(values)]
    return f"pd.DataFrame({rows!r})"


def test_chart_series_legend_and_tooltip_use_the_label():
    code = (f"pd.concat([{_frame('eval_loss', [3.0, 2.5, 2.4])}, "
            f"{_frame('eval_loss', [3.1, 2.6, 2.3], run='#2')}])")
    at = _chart_script(code, lang="fr").run()
    assert not at.exception
    (spec, data), = charts(at)
    label = _catalogue("fr")["eval_loss"]
    assert set(data["series"]) == {f"#1 {label}", f"#2 {label}"}
    assert "eval_loss" not in " ".join(data["series"])
    tips = next(layer["encoding"]["tooltip"] for layer in spec["layer"]
                if "tooltip" in layer["encoding"])
    assert [tip["title"] for tip in tips][:3] == ["Série", "étape", "Valeur"]


def test_unknown_metric_is_drawn_under_its_own_name():
    at = _chart_script(_frame("dpo_new_thing", [1.0, 0.5]), lang="fr").run()
    assert not at.exception
    (_, data), = charts(at)
    assert set(data["series"]) == {"dpo_new_thing"}


def test_eval_and_short_series_are_not_smoothed():
    # three eval points: the line ends where the last measurement is (2.432), not at an EMA
    at = _chart_script(_frame("eval_loss", [2.75, 2.6, 2.432]), smoothing=0.6).run()
    (spec, data), = charts(at)
    assert list(data["smooth"]) == pytest.approx([2.75, 2.6, 2.432])
    assert len(spec["layer"]) == 1  # no faded raw copy behind it
    # a short training series (fewer than 10 points) is drawn as it is too
    at = _chart_script(_frame("train_loss", [3.0, 1.0, 2.0, 0.5]), smoothing=0.6).run()
    (_, data), = charts(at)
    assert list(data["smooth"]) == list(data["value"])
    # a long training series is smoothed, its raw curve faded behind
    values = [2.0 + (-1) ** i for i in range(30)]
    at = _chart_script(_frame("train_loss", values), smoothing=0.6).run()
    (spec, data), = charts(at)
    assert len(spec["layer"]) == 2
    assert data["smooth"].iloc[-1] != pytest.approx(data["value"].iloc[-1])
    assert data["smooth"].std() < data["value"].std()


# -- the Runs page ---------------------------------------------------------------------------
def _run(store, stage, status, points, name="train_loss"):
    rid = store.create_run(stage, {})
    store.update_run(rid, status=status, started=time.time() - 60, finished=time.time())
    for step in range(points):
        store.log_metrics(rid, step, {name: 2.0 - step / 100})
    return rid


def test_overlay_preselects_only_finished_runs_with_a_curve(store):
    a = _run(store, "sft", "succeeded", 20)
    b = _run(store, "sft", "succeeded", 12)
    _run(store, "sft", "succeeded", 3)      # too short to be a curve
    _run(store, "sft", "cancelled", 1)      # the newest: cancelled after one point
    at = AppTest.from_file(str(ROOT / "views" / "runs.py"), default_timeout=60).run()
    assert not at.exception
    assert at.multiselect(key="runs_overlay_ids_sft").value == [b, a]


def test_overlay_preselects_none_when_no_run_has_a_curve(store):
    _run(store, "sft", "succeeded", 2)
    _run(store, "sft", "cancelled", 1)
    at = AppTest.from_file(str(ROOT / "views" / "runs.py"), default_timeout=60).run()
    assert not at.exception
    assert at.multiselect(key="runs_overlay_ids_sft").value == []


def test_run_charts_in_french_are_titled_by_label(store):
    rid = _run(store, "ppo", "succeeded", 12, name="non_score_reward")
    store.log_metrics(rid, 12, {"advantage_std_raw": 0.5, "eval_loss": 1.0})
    at = AppTest.from_file(str(ROOT / "views" / "runs.py"), default_timeout=60)
    at.session_state["lang"] = "fr"
    at.run()
    assert not at.exception
    titles = {spec["title"] for spec, _ in charts(at)}
    fr = _catalogue("fr")
    assert fr["non_score_reward"] in titles and fr["eval_loss"] in titles
    assert not titles & {"non_score_reward", "eval_loss", "advantage_std_raw"}
    table = at.dataframe[0].value
    assert table["metric"].str.startswith(fr["non_score_reward"] + " = ").all()  # key metric
