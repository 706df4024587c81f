"""A stage's new-run form, drawn from its settings schema (engine.schema).

Each field's widget follows its type and metadata: a checkbox for a flag, a select box for
choices, a number input with the declared bounds and step, a text input otherwise (a list
as comma-separated text). Basic fields come first, four to a row; advanced ones inside an
expander. Fields the page draws itself (`widget="page"`: the model, the dataset, runs to
start from) are passed in as `fixed` values.

No `st.form`: pressing Enter in a field only commits that field, and a run starts only from
the page's start button (`start_button`), which refuses the same config twice within a few
seconds. The values are kept per session under "form.<stage>" in session state, outside
the widgets' own state, so they survive leaving the page and a language switch (each
language draws widgets of its own keys, seeded from the kept values).
"""
from __future__ import annotations

import json
import time
from typing import Any

import streamlit as st

from engine import schema
from engine.schema import ADVANCED, ConfigError, FieldInfo
from ui.common import translated_choice
from ui.i18n import catalogue, current_language, t

DUPLICATE_SECONDS = 10.0


def field_key(stage: str, name: str, lang: str = "en") -> str:
    """The widget key of a form field in a language (tests drive the form by it)."""
    return f"form.{stage}.{name}.{lang}"


def kept(stage: str) -> dict[str, Any]:
    """The session's values of a stage's form (dotted names), kept across pages."""
    return st.session_state.setdefault(f"form.{stage}", {})


def _help(info: FieldInfo, stage: str) -> str | None:
    """The stage's own help text if it has one, else the shared one."""
    for key in info.help_keys(stage):
        if key in catalogue("en"):
            return t(key)
    return None


def _widget(info: FieldInfo, stage: str, col, value: Any) -> Any:
    label = t(info.label_key)
    help_ = _help(info, stage)
    meta = info.meta
    key = field_key(stage, info.name, current_language())
    if meta.choices:
        return translated_choice(col.selectbox, label, list(meta.choices),
                                 f"form.{stage}.{info.name}",
                                 lambda c, k=info.key: t(f"settings.{k}_{c}"), help=help_,
                                 index=list(meta.choices).index(value)
                                 if value in meta.choices else 0)
    if info.type == "bool":
        return col.checkbox(label, value=bool(value), key=key, help=help_)
    if info.type == "int":
        lo = None if meta.min is None else int(meta.min)
        hi = None if meta.max is None else int(meta.max)
        return int(col.number_input(label, min_value=lo, max_value=hi,
                                    value=int(value if value is not None else lo or 0),
                                    step=int(meta.step or 1), key=key, help=help_))
    if info.type == "float":
        lo = None if meta.min is None else float(meta.min)
        hi = None if meta.max is None else float(meta.max)
        kwargs = {"format": meta.format} if meta.format else {}
        if value is None and (info.nullable or meta.optional):
            current = None  # an empty box: the setting's "none" (e.g. ai_share: every row)
        else:
            current = float(value if value is not None else info.default or lo or 0.0)
        got = col.number_input(label, min_value=lo, max_value=hi, value=current,
                               step=float(meta.step or 0.01), key=key, help=help_, **kwargs)
        return None if got is None else float(got)
    if info.type == "list":
        text = col.text_input(label, value=", ".join(value or []), key=key, help=help_)
        items = [x.strip() for x in text.split(",") if x.strip()]
        return items or None
    return col.text_input(label, value="" if value is None else str(value), key=key,
                          help=help_)


def _nest(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for name, value in flat.items():
        target = out
        parts = name.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def settings_form(cls: type, stage: str, fixed: dict[str, Any] | None = None,
                  defaults: dict[str, Any] | None = None):
    """Draw the form of `cls` (a stage config class); returns (config, error): the validated
    config, or None and the ConfigError that `validate()` raised (shown under the form)."""
    fixed = dict(fixed or {})
    values = kept(stage)
    infos = [i for i in schema.describe(cls)
             if i.meta.widget not in ("page", "hidden") and i.name not in fixed]
    for info in infos:
        values.setdefault(info.name, (defaults or {}).get(info.name, info.default))

    def draw(group: list[FieldInfo]) -> None:
        for start in range(0, len(group), 4):
            cols = st.columns(4)
            for col, info in zip(cols, group[start:start + 4]):
                values[info.name] = _widget(info, stage, col, values[info.name])

    draw([i for i in infos if i.meta.group != ADVANCED])
    advanced = [i for i in infos if i.meta.group == ADVANCED]
    if advanced:
        with st.expander(t("settings.advanced"), icon=":material/tune:"):
            draw(advanced)
    data = _nest({**{i.name: values[i.name] for i in infos}, **fixed})
    try:
        return schema.from_dict(cls, data).validate(), None
    except ConfigError as exc:
        label = t(f"settings.{exc.field.replace('.', '_')}") if exc.field else ""
        st.error(t("settings.invalid", message=f"{label} — {exc}" if label else str(exc)),
                 icon=":material/error:")
        return None, exc


def reset(stage: str) -> None:
    """Forget a stage's kept form values (back to the schema's defaults)."""
    st.session_state.pop(f"form.{stage}", None)


def start_button(stage: str, config, label: str, name: str | None = None,
                 parents: list[int] | None = None) -> int | None:
    """The only way a form starts a run: a click on this button. The same config submitted
    again within DUPLICATE_SECONDS is refused (a double click, an impatient second try).
    Returns the new run's id."""
    from ui.common import get_jobs

    clicked = st.button(label, icon=":material/play_arrow:", type="primary",
                        disabled=config is None, key=f"start.{stage}")
    if not clicked or config is None:
        return None
    fingerprint = json.dumps([schema.to_dict(config), name or ""], sort_keys=True, default=str)
    last = st.session_state.get(f"last_start.{stage}")
    if last and last[0] == fingerprint and time.time() - last[1] < DUPLICATE_SECONDS:
        st.warning(t("settings.duplicate", id=last[2]), icon=":material/content_copy:")
        return None
    run_id = get_jobs().submit(stage, config, name=name or None, parents=parents or None)
    st.session_state[f"last_start.{stage}"] = (fingerprint, time.time(), run_id)
    return run_id
