"""Compare: before/after RLHF side by side, and the blind A/B vote."""
import altair as alt
import pandas as pd
import streamlit as st

from engine.capability import SHIPPED, capability_summary, load_questions, retention_sentence
from engine.compare import (MAX_MODELS, CompareConfig, blind_items, comparison_models,
                            model_summary, outputs_by_prompt, pending_items, record_vote,
                            reward_preference, short_prompt, win_rate)
from engine import data as D
from engine.data.collect import model_sources
from engine.inference.models import display_name
from ui.common import (get_jobs, get_store, live_job_panel, model_spec, run_label,
                       stage_label, translated_choice, translated_radio)
from ui.i18n import t, tn

store, jobs = get_store(), get_jobs()
st.title(":material/compare: " + t("compare.title"))
st.caption(t("compare.intro"))


def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _pct(value) -> str:
    return "—" if value is None else f"{value:.0%}"


def capability_section(cid: int, cfg: dict, summary: list[dict], rows: list[dict]) -> None:
    """Accuracy on the question set per model with its 95% interval, beside the mean reward
    and the blind A/B win rate against the base, and the sentence computed from them."""
    cap = capability_summary(rows)
    votes = store.list_votes(cid)
    reward_of = {s["model"]: s["mean_reward"] for s in summary}
    st.subheader(t("compare.cap_title"))
    set_name = cfg.get("capability") or SHIPPED
    questions = cap[0]["n"] if cap else 0
    st.caption(t("compare.cap_set_shipped", n=questions) if set_name == SHIPPED
               else t("compare.cap_set_dataset", name=set_name, n=questions,
                      split=cfg.get("split") or "eval"))

    def versus_base(model: str) -> str:
        if model == "base":
            return "—"
        wr = win_rate(votes, model, "base")
        if not wr["n"]:
            return "—"
        return t("compare.cap_win", rate=_pct(wr["rate"]), votes=tn("compare.votes", wr["n"]),
                 low=_pct(wr["low"]), high=_pct(wr["high"]))

    table = pd.DataFrame([{
        t("compare.col_model"): c["model"],
        t("compare.cap_col_accuracy"): _pct(c["accuracy"]),
        t("compare.cap_col_interval"): f"{_pct(c['low'])} – {_pct(c['high'])}",
        t("compare.cap_col_correct"): t("compare.cap_correct", correct=c["correct"], n=c["n"]),
        t("compare.cap_col_langs"): " · ".join(f"{lang.upper()} {_pct(v['accuracy'])}"
                                               for lang, v in c["by_lang"].items()) or "—",
        t("compare.col_reward"): _fmt(reward_of.get(c["model"])),
        t("compare.cap_col_win"): versus_base(c["model"]),
    } for c in cap])
    st.dataframe(table, hide_index=True, width="stretch")
    sentence = retention_sentence(cap)
    if sentence:
        st.markdown(t(sentence["key"], **sentence["params"]))
    else:  # nothing to compare: no base model, or the base model alone
        st.caption(t("compare.cap_need_other" if [c["model"] for c in cap] == ["base"]
                     else "compare.cap_need_base"))
    st.caption(t("compare.cap_rule"))
    with st.expander(t("compare.cap_answers"), icon=":material/quiz:"):
        by_question: dict[str, dict] = {}
        for r in rows:
            item = by_question.setdefault(r["question_id"], {
                t("compare.cap_col_question"): r["prompt"],
                t("compare.cap_col_reference"): " / ".join(r["references"])})
            item[r["model"]] = ("✓ " if r["correct"] else "✗ ") + (r["answer"] or "")
        st.dataframe(pd.DataFrame(list(by_question.values())), hide_index=True,
                     width="stretch")


def comparison_picker(key: str) -> int | None:
    comparisons = store.list_comparisons()
    if not comparisons:
        st.info(t("compare.none_yet"))
        return None
    labels = {}
    for c in comparisons:
        cfg = c.get("config") or {}
        labels[c["id"]] = t("compare.comparison_label", id=c["id"], name=c["name"],
                            prompts=tn("compare.prompts", len(cfg.get("prompts") or [])),
                            models=", ".join((cfg.get("labels") or {}).values()))
    return translated_choice(st.selectbox, t("compare.pick"), list(labels), key, labels.get)


tab_new, tab_results, tab_vote = st.tabs([":material/play_arrow: " + t("compare.tab_new"),
                                          ":material/view_column: " + t("compare.tab_results"),
                                          ":material/how_to_vote: " + t("compare.tab_vote")])

# -- a new comparison -----------------------------------------------------------------------
with tab_new:
    def source_label(key: str) -> str:
        if key == "base":
            return t("compare.base_model", name=display_name(model_spec()))
        run = store.get_run(int(key))
        return f"{run['stage'].upper()} · {run_label(run)}"

    # the base and the runs that saved an adapter (engine.data.collect.model_sources)
    sources = {key: source_label(key) for key in model_sources(store)}
    default = ["base"] + [k for k in sources if k != "base"][:1]
    chosen = translated_choice(st.multiselect, t("compare.models"), list(sources),
                               "compare_models", sources.get, default=default,
                               max_selections=MAX_MODELS, help=t("compare.models_help"))
    mode = translated_radio(t("compare.prompt_source"), ["typed", "dataset"], horizontal=True,
                            format_func=lambda m: t("compare.prompt_" + m),
                            key="compare_prompt_mode")
    prompts: list = []
    dataset, split, num_prompts = None, "eval", 8
    if mode == "typed":
        typed = st.text_area(t("compare.prompts"), value=t("compare.example_prompts"),
                             height=140, key="compare_prompts", help=t("compare.prompts_help"))
        prompts = [line.strip() for line in typed.splitlines() if line.strip()]
    else:
        datasets = [d["name"] for d in D.list_datasets(store)]
        if not datasets:
            st.warning(t("compare.no_datasets"))
        else:
            c1, c2, c3 = st.columns(3)
            dataset = c1.selectbox(t("compare.dataset"), datasets, key="compare_dataset")
            split = translated_choice(c2.radio, t("compare.split"), ["eval", "train"],
                                      "compare_split", lambda s: t("compare.split_" + s),
                                      horizontal=True)
            num_prompts = int(c3.number_input(t("compare.num_prompts"), 1, 200, 8,
                                              key="compare_num"))
    rewards = {None: t("compare.no_reward")}
    for run in store.list_runs(stage="reward", status="succeeded"):
        rewards[run["id"]] = run_label(run)
    reward_run = translated_choice(st.selectbox, t("compare.reward_run"), list(rewards),
                                   "compare_reward", rewards.get, help=t("compare.reward_help"))
    # capability retention: the shipped questions (default), an SFT dataset's, or none
    capabilities = {SHIPPED: t("compare.cap_shipped", n=len(load_questions()))}
    for d in D.list_datasets(store, kind="sft"):
        capabilities[d["name"]] = t("compare.cap_dataset", name=d["name"])
    capabilities[None] = t("compare.cap_none")
    c1, c2 = st.columns([3, 1])
    with c1:
        capability = translated_choice(st.selectbox, t("compare.cap_set"), list(capabilities),
                                       "compare_capability", capabilities.get,
                                       help=t("compare.cap_help"))
    cap_limit = int(c2.number_input(t("compare.cap_limit"), 0, 10_000, 0, key="cmp_cap_limit",
                                    help=t("compare.cap_limit_help"),
                                    disabled=capability is None))
    if capability not in (SHIPPED, None):
        st.caption(t("compare.cap_dataset_note"))
    with st.expander(t("compare.sampling"), icon=":material/tune:"):
        c1, c2, c3, c4 = st.columns(4)
        d = CompareConfig()
        max_new = int(c1.number_input(t("compare.max_new_tokens"), 1, 1024, d.max_new_tokens,
                                      key="cmp_mnt"))
        temperature = float(c2.number_input(t("compare.temperature"), 0.05, 2.0, d.temperature,
                                            0.05, key="cmp_temp"))
        top_p = float(c3.number_input(t("compare.top_p"), 0.05, 1.0, d.top_p, 0.05,
                                      key="cmp_topp"))
        seed = int(c4.number_input(t("compare.seed"), 0, 2**31 - 1, d.seed, key="cmp_seed"))
        greedy = st.checkbox(t("compare.greedy"), value=d.greedy, key="cmp_greedy")
        compute_kl = st.checkbox(t("compare.compute_kl"), value=d.compute_kl, key="cmp_kl")
    name = st.text_input(t("compare.name"), key="compare_name")
    if st.button(t("compare.start"), type="primary", icon=":material/play_arrow:",
                 key="compare_start"):
        if not 2 <= len(chosen) <= MAX_MODELS:
            st.error(t("compare.need_models", n=MAX_MODELS))
        elif mode == "typed" and not prompts:
            st.error(t("compare.need_prompts"))
        elif mode == "dataset" and not dataset:
            st.error(t("compare.no_datasets"))
        else:
            cfg = CompareConfig(model=model_spec(), name=name.strip(), sources=chosen,
                                prompts=prompts, dataset=dataset, split=split,
                                num_prompts=num_prompts, reward_run=reward_run,
                                max_new_tokens=max_new, temperature=temperature, top_p=top_p,
                                greedy=greedy, seed=seed, compute_kl=compute_kl,
                                capability=capability, capability_limit=cap_limit)
            st.session_state["compare_job"] = jobs.submit("compare", cfg)

    job_id = st.session_state.get("compare_job")
    if job_id:  # when it ends, the results and vote tabs list the new comparison
        live_job_panel(job_id, "compare_job_seen")
        done = store.get_run(job_id)
        if done["status"] == "succeeded":
            st.success(t("compare.done", id=done["summary"].get("comparison_id")))

# -- results ------------------------------------------------------------------------------------
with tab_results:
    cid = comparison_picker("compare_pick")
    if cid is not None:
        outputs = store.get_comparison_outputs(cid)
        cfg = store.get_comparison(cid)["config"]
        st.caption(t("compare.settings", seed=cfg.get("seed"), temperature=cfg.get("temperature"),
                     top_p=cfg.get("top_p"), max_new_tokens=cfg.get("max_new_tokens"),
                     greedy=t("compare.yes") if cfg.get("greedy") else t("compare.no")))
        summary = model_summary(outputs)
        # a missing number (no reward model, KL off, an undefined correlation) shows "—"
        table = pd.DataFrame([{
            t("compare.col_model"): s["model"],
            t("compare.col_method"): t("compare.method_base") if s["method"] == "base"
            else stage_label(s["method"]),
            t("compare.col_answers"): s["answers"],
            t("compare.col_reward"): _fmt(s["mean_reward"]), "distinct-1": s["distinct_1"],
            "distinct-2": s["distinct_2"], t("compare.col_length"): s["mean_length"],
            t("compare.col_kl"): _fmt(s["mean_kl"]),
            t("compare.col_corr"): "—" if s["reward_length_corr"] is None
            else f"{s['reward_length_corr']:+.2f}",
        } for s in summary])
        st.subheader(t("compare.per_model"))
        st.dataframe(table, hide_index=True, width="stretch", column_config={
            t("compare.col_corr"): st.column_config.TextColumn(
                t("compare.col_corr"), help=t("compare.corr_undefined"))})
        st.caption(t("compare.metrics_help"))
        if any((o.get("kl") or 0) < 0 for o in outputs):
            st.caption(t("compare.kl_negative"))
        if any(s["reward_length_corr"] is None for s in summary):
            st.caption(t("compare.corr_undefined"))
        capability_rows = store.get_capability_answers(cid)
        if capability_rows:
            capability_section(cid, cfg, summary, capability_rows)
        scored = [o for o in outputs if o.get("reward") is not None]
        if scored:
            df = pd.DataFrame([{"model": o["model"], "length": o["length"],
                                "reward": o["reward"]} for o in scored])
            chart = alt.Chart(df).mark_circle(size=60, opacity=0.7).encode(
                x=alt.X("length:Q", title=t("compare.length_tokens")),
                y=alt.Y("reward:Q", title=t("compare.reward")),
                color=alt.Color("model:N", title=None), tooltip=["model", "length", "reward"])
            st.altair_chart(chart.properties(title=t("compare.length_bias"), height=260),
                            width="stretch")
        models = comparison_models(outputs)
        items = outputs_by_prompt(outputs)
        st.subheader(t("compare.answers", prompts=tn("compare.prompts", len(items))))
        shown = items[:50]
        for item in shown:
            with st.container(border=True):
                # answers and prompts as text: a model's "2. **" is no Markdown to render
                st.markdown(f"**{item['prompt_index'] + 1}.**")
                st.text(item["prompt"])
                cols = st.columns(len(models))
                for col, model in zip(cols, models):
                    row = item["answers"].get(model)
                    with col:
                        st.markdown(f"**{model}**")
                        if row is None:
                            st.caption("—")
                            continue
                        st.text(row["response"] or t("compare.empty_answer"))
                        length = row.get("length")
                        st.caption(t("compare.answer_stats", reward=_fmt(row.get("reward")),
                                     kl=_fmt(row.get("kl")), tokens="—" if length is None
                                     else tn("compare.tokens", length)))
        if len(items) > len(shown):
            st.caption(tn("compare.more_hidden", len(items) - len(shown)))

# -- blind A/B --------------------------------------------------------------------------------
with tab_vote:
    st.caption(t("compare.vote_intro"))
    vid = comparison_picker("vote_pick")
    if vid is not None:
        outputs = store.get_comparison_outputs(vid)
        models = comparison_models(outputs)
        if len(models) < 2:
            st.info(t("compare.vote_need_two"))
        else:
            c1, c2 = st.columns(2)
            model_x = c1.selectbox(t("compare.model_x"), models, index=len(models) - 1,
                                   key=f"vote_x_{vid}")
            others = [m for m in models if m != model_x]
            model_y = c2.selectbox(t("compare.model_y"), others, key=f"vote_y_{vid}")
            items = blind_items(outputs, model_x, model_y, comparison_id=vid)
            votes = store.list_votes(vid)
            pending = pending_items(items, votes)
            st.progress((len(items) - len(pending)) / max(1, len(items)),
                        text=tn("compare.voted", len(items), done=len(items) - len(pending)))
            if pending:
                item = pending[0]
                with st.container(border=True):
                    st.markdown(f"**{t('compare.prompt')}**")
                    st.text(short_prompt(item["prompt"], 400))
                    ca, cb = st.columns(2)
                    with ca:
                        st.markdown(f"#### {t('compare.answer_a')}")
                        st.text(item["response_a"] or t("compare.empty_answer"))
                    with cb:
                        st.markdown(f"#### {t('compare.answer_b')}")
                        st.text(item["response_b"] or t("compare.empty_answer"))
                    b1, b2, b3 = st.columns(3)
                    key = f"{vid}-{item['prompt_index']}-{len(votes)}"
                    for col, choice, icon in ((b1, "a", ":material/arrow_back:"),
                                              (b2, "tie", ":material/drag_handle:"),
                                              (b3, "b", ":material/arrow_forward:")):
                        col.button(t("compare.vote_" + choice), key=f"vote-{choice}-{key}",
                                   icon=icon, width="stretch", on_click=record_vote,
                                   args=(store, item, choice), kwargs={"comparison_id": vid})
            else:
                st.success(t("compare.all_voted"))

            wr = win_rate(votes, model_x, model_y)
            rp = reward_preference(votes, model_x, model_y)
            st.subheader(t("compare.results_title", x=model_x, y=model_y))
            m1, m2, m3 = st.columns(3)
            m1.metric(t("compare.win_rate"), "—" if wr["rate"] is None
                      else f"{wr['rate']:.0%}",
                      help=t("compare.win_rate_help"))
            m1.caption(t("compare.win_detail", votes=tn("compare.votes", wr["n"]),
                         wins=tn("compare.wins", wr["wins"]),
                         losses=tn("compare.losses", wr["losses"]),
                         ties=tn("compare.ties", wr["ties"]), low=f"{wr['low']:.0%}",
                         high=f"{wr['high']:.0%}"))
            m2.metric(t("compare.reward_rate"), "—" if rp["reward_rate"] is None
                      else f"{rp['reward_rate']:.0%}", help=t("compare.reward_rate_help"))
            m2.caption(tn("compare.reward_detail", rp["n"]))
            m3.metric(t("compare.agreement"), "—" if rp["agreement"] is None
                      else f"{rp['agreement']:.0%}", help=t("compare.agreement_help"))
            m3.caption(tn("compare.agreement_detail", rp["decisive"],
                          low=f"{rp['agreement_low']:.0%}", high=f"{rp['agreement_high']:.0%}"))
