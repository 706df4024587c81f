"""One page skeleton for every training stage: title and equation, the new-run form
(drawn from the stage's settings schema), the run picker, and the run's view (live while
it is queued or running, then once more with what only a finished run shows).

A page gives what is its own: the fields it draws itself (`page_fields`: the dataset, runs
to start from, a reward), the run view (`run_view(run_id) -> run`) and what follows a
finished run (`after_run(run)`: e.g. SFT's "try it").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import streamlit as st

from engine import memory
from engine.runtime import stages
from engine.runtime.runs import ACTIVE_STATES
from ui.common import (get_store, keep_widget, model_spec, run_label, run_picker,
                       translated_choice)
from ui.forms import settings_form, start_button
from ui.i18n import t


def page_values_key(stage: str) -> str:
    """Session key of what a stage page's own widgets last chose (`PageFields.values`)."""
    return f"page.{stage}"


@dataclass
class PageFields:
    """What a page's own widgets decided: fixed config values, the runs the new run
    descends from, and defaults for schema fields that depend on the page's choices."""
    values: dict[str, Any] = field(default_factory=dict)
    parents: list[int] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)


def start_and_prompts(prefix: str, datasets: list[dict], default_dataset: str
                      ) -> tuple[int | None, str, str]:
    """An RL stage's two first choices, side by side: where the policy starts (the newest
    finished SFT run by default, or the base) and the dataset whose prompts it answers.
    Returns (SFT run id or None, dataset name, the base model the policy runs on: the SFT
    run's own base when it starts from one)."""
    spec = model_spec()
    sft_runs = {r["id"]: r for r in get_store().list_runs(stage="sft", status="succeeded")}
    c = st.columns(2)
    sft_choice = translated_choice(c[0].selectbox, t("ppo.start_from"), [None, *sft_runs],
                                   f"{prefix}_sft", lambda i: t("ppo.base_model") if i is None
                                   else run_label(sft_runs[i]), help=t("ppo.start_from_help"),
                                   index=1 if sft_runs else 0)  # the pipeline: newest SFT
    names = [d["name"] for d in datasets]
    rows = {d["name"]: d for d in datasets}
    dataset = translated_choice(c[1].selectbox, t("ppo.dataset"), names, f"{prefix}_dataset",
                                lambda n: t("ppo.dataset_option", name=n, rows=rows[n]["rows"],
                                            kind=rows[n]["kind"]),
                                index=names.index(default_dataset)
                                if default_dataset in names else 0,
                                help=t("ppo.dataset_help"))
    model = (sft_runs[sft_choice].get("config") or {}).get("model") or spec \
        if sft_choice is not None else spec
    return sft_choice, dataset, model


def memory_estimate(stage: str, config) -> None:
    """The run's memory estimate (engine.memory) beside the device's free memory, and a
    warning when it would not fit (the run is refused at its start then)."""
    try:
        est = memory.estimate(stage, config, get_store())
    except Exception as exc:  # noqa: BLE001 - an estimate never breaks the page
        st.caption(t("common.memory_unknown", error=str(exc)[:200]))
        return
    parts = " · ".join(t("common.memory_part", name=k, gb=f"{v / memory.GB:.2f}")
                       for k, v in est.parts.items() if v)
    free = "?" if est.free is None else f"{est.free / memory.GB:.1f}"
    text = t("common.memory_estimate", gb=f"{est.total / memory.GB:.2f}", free=free,
             device=est.device)
    if est.checkpointing:
        text += " " + t("common.memory_checkpointing")
    if est.fits:
        st.caption(f":material/memory: {text}", help=parts)
    else:
        st.warning(text + " " + t("common.memory_too_big", advice="; ".join(
            memory.advice(est, config))), icon=":material/memory:")
        st.caption(parts)


@dataclass
class StagePage:
    stage: str                                   # the engine stage ("sft", "reward", ...)
    icon: str                                    # a material icon for the title
    formulas: list[str]                          # LaTeX shown under the intro
    page_fields: Callable[[], PageFields | None]  # None: the page said why no run can start
    run_view: Callable[[int], dict]
    after_run: Callable[[dict], None] | None = None
    view_key: str = ""                           # session key of the picked run

    def __post_init__(self) -> None:
        self.view_key = self.view_key or f"{self.stage}_view"

    def new_run(self) -> None:
        own = self.page_fields()
        if own is None:
            return
        # what the page chose (runs, dataset, reward): a sweep of this stage starts from it
        st.session_state[page_values_key(self.stage)] = dict(own.values)
        cls = stages.get(self.stage).config_cls
        config, _ = settings_form(cls, self.stage, fixed=own.values, defaults=own.defaults)
        if config is not None and self.stage in memory.STAGES:
            memory_estimate(self.stage, config)
        keep_widget(f"form.{self.stage}.run_name")   # kept across a page switch
        name = st.text_input(t(f"{self.stage}.run_name"),
                             placeholder=t(f"{self.stage}.run_name_placeholder"),
                             key=f"form.{self.stage}.run_name")
        run_id = start_button(self.stage, config, t(f"{self.stage}.start"),
                              name=name.strip() or None, parents=own.parents)
        if run_id is not None:
            st.session_state[self.view_key] = run_id
            st.toast(t(f"{self.stage}.started", id=run_id), icon=":material/play_arrow:")

    def live(self, run_id: int) -> None:
        @st.fragment(run_every=2)
        def view() -> None:
            run = self.run_view(run_id)
            if run["status"] not in ACTIVE_STATES:
                st.rerun()  # the whole page: the finished view and what follows it

        view()

    def render(self) -> None:
        st.title(f"{self.icon} " + t(f"{self.stage}.title"))
        st.write(t(f"{self.stage}.intro"))
        for formula in self.formulas:
            st.latex(formula)
        with st.container(border=True):
            st.subheader(":material/add_circle: " + t(f"{self.stage}.new_run"))
            self.new_run()
        st.subheader(":material/monitoring: " + t(f"{self.stage}.runs"))
        run = run_picker(self.stage, t(f"{self.stage}.view_run"), key=self.view_key)
        if run is None:
            st.caption(t(f"{self.stage}.no_runs"))
        elif run["status"] in ACTIVE_STATES:
            self.live(run["id"])
        else:
            self.run_view(run["id"])
            if run["status"] == "succeeded" and self.after_run is not None:
                self.after_run(get_store().get_run(run["id"]))
